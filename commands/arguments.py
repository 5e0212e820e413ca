"""Argument types and option groups shared by the ``pdsn`` subcommands (argparse names the flag).

Imports nothing beyond the standard library at module level, so that a command using these types needs only
what it imports itself (``pdsn gpu-check`` runs where the runtime's libraries are missing).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def bundle_options(parser: argparse.ArgumentParser) -> None:
    from pdsn.runtime.backends import BACKEND_CHOICES, DEVICES

    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="inference backend (default auto: the fastest installed for the device and bundle)",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    remote = parser.add_argument_group("--backend triton: a Triton server holding a `pdsn triton-repo` repository")
    remote.add_argument("--triton-url", help="host:port of its gRPC or HTTP endpoint (default 127.0.0.1:8001 / 8000)")
    remote.add_argument("--triton-protocol", choices=("grpc", "http"), default="grpc")
    remote.add_argument("--triton-model", default="pdsn", help="the model's name in the repository (default pdsn)")


def backend_options(args: argparse.Namespace) -> dict:
    """``Recognizer.open``'s backend options from ``bundle_options``' flags (only the triton backend takes any)."""
    if args.backend != "triton":
        given = [flag for flag, value in (("--triton-url", args.triton_url),) if value]
        if given:
            raise ValueError(f"{given[0]} is for --backend triton, not --backend {args.backend}")
        return {}
    return {"url": args.triton_url, "protocol": args.triton_protocol, "model_name": args.triton_model}


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def list_of(kind: type, minimum: float, what: str):
    """An argparse type for comma-separated values of ``kind``, each at least ``minimum``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    return parse


numbers = list_of(int, 1, "positive integers")
delays = list_of(float, 0.0, "milliseconds >= 0")


def real(unit: str, zero: bool = True, below: float = math.inf):
    """An argparse type for a finite number of ``unit``: >= 0 (> 0 without ``zero``), and under ``below``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value >= below:
            bound = f"in [0, {below:g})" if math.isfinite(below) else f"{'>=' if zero else '>'} 0"
            raise argparse.ArgumentTypeError(f"expected {unit} {bound}, got {text!r}")
        return value

    return parse


def whole_number(minimum: int):
    """An argparse type for a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


positive = whole_number(1)
nonnegative = whole_number(0)


def cosine(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {text!r}") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {text!r}")
    return value


def output_file(suffix: str):
    """An argparse type for a file to write: ending in ``suffix``, not an existing folder."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(
                f"{text!r} is a folder; give a file path such as {path / ('out' + suffix)}"
            )
        if path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{text!r} must end in {suffix} (the file is written as {suffix})")
        return path

    return parse


npy_path = output_file(".npy")
json_path = output_file(".json")


def cells(text: str) -> list[int] | str:
    """Comma-separated cell ids 0..24, or ``auto`` for the bundle's occlusion estimator."""
    if text.strip() == "auto":
        return "auto"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cell ids 0..24 or 'auto', got {text!r}") from None


def gallery_location(text: str) -> str | Path:
    """A gallery: a ``postgresql://`` URL (kept as text) or a SQLite file path."""
    from pdsn.runtime.gallery.locations import is_database_url

    return text if is_database_url(text) else Path(text)


def detection_options(parser: argparse.ArgumentParser) -> None:
    """How faces are found in photos (aligned crops skip detection)."""
    group = parser.add_argument_group("photos: faces are found by the bundle's detector")
    group.add_argument(
        "--min-face", type=float, default=None, help="smallest face side to look for, in pixels (default 20)"
    )
    group.add_argument(
        "--thresholds",
        type=list_of(float, 0.0, "three probabilities in [0, 1]"),
        default=None,
        help="the detector's three stage thresholds (default 0.6,0.7,0.7)",
    )


def detection_settings(args: argparse.Namespace):
    """``DetectionSettings`` from ``detection_options``' flags; a bad value is a ValueError naming the flag."""
    from pdsn.runtime.photos import DetectionSettings

    defaults = DetectionSettings()
    try:
        return DetectionSettings(
            defaults.min_face if args.min_face is None else args.min_face,
            defaults.thresholds if args.thresholds is None else args.thresholds,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--min-face / --thresholds: {exc}") from None


def landmark_points(text: str) -> list[list[float]]:
    """Five landmarks as x1,y1,...,x5,y5 (eyes, nose, mouth corners, in pixels of the photo)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 10 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected 10 comma-separated numbers x1,y1,...,x5,y5 (left eye, right eye, nose, left and right "
            f"mouth corners), got {text!r}"
        )
    return [values[i : i + 2] for i in range(0, 10, 2)]


def face_choice(text: str) -> int | str:
    """Which face of a photo: ``largest`` or an index as ``pdsn detect`` lists them."""
    if text == "largest":
        return text
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(
            f"expected 'largest' or a face index 0, 1, ... (as `pdsn detect` lists them), got {text!r}"
        )
    return index
