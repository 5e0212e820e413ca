"""Argument types and option groups shared by the ``pdsn`` subcommands (argparse names the flag)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pdsn.runtime.backends import BACKEND_CHOICES, DEVICES


def bundle_options(parser: argparse.ArgumentParser) -> None:
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


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


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
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)
