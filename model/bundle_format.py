"""The bundle's on-disk format: ``manifest.json``, file hashes and the model contract.

Torch-free: the exporter writes this format and the runtime reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from pdsn.model.grid import CELL_X_BOUNDS, CELL_Y_BOUNDS, CROP_HEIGHT, CROP_WIDTH, GRID_COLS, GRID_ROWS

BUNDLE_FORMAT = "pdsn-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

FDM_DOMAIN = "ai.pdsn"
FDM_OP = "FdmGatherMul"
FDM_OP_VERSION = 1

IMAGE_INPUT = "image"
OCCLUSION_INPUT = "occlusion"
DICTIONARY_INPUT = "fdm_dictionary"
EMBEDDING_OUTPUT = "embedding"
# The trunk model (the recognition model cut before the FDM op) outputs the feature map.
FEATURES_OUTPUT = "features"

IMAGE_LAYOUTS = ("nhwc-uint8", "nchw-float32")
DICTIONARY_BINDINGS = ("input", "embedded")


class BundleFormatError(ValueError):
    """A manifest that this version of pdsn-deploy cannot read."""


class BundleIntegrityError(ValueError):
    """A bundle file is missing, altered or inconsistent with the manifest."""


@dataclass(frozen=True)
class ModelContract:
    """What a caller must feed the model and what it gets back (ARCHITECTURE.md §4)."""

    image_layout: str = "nhwc-uint8"
    height: int = CROP_HEIGHT
    width: int = CROP_WIDTH
    channels: int = 3
    color: str = "RGB"
    # x_float = (x_uint8 / scale - mean) / std, done inside the graph for uint8 input.
    normalization: dict = field(default_factory=lambda: {"scale": 255.0, "mean": 0.5, "std": 0.5})
    grid: dict = field(
        default_factory=lambda: {
            "rows": GRID_ROWS,
            "cols": GRID_COLS,
            "x_bounds": list(CELL_X_BOUNDS),
            "y_bounds": list(CELL_Y_BOUNDS),
        }
    )
    feature_shape: tuple[int, int, int] = (512, 7, 6)
    embedding_size: int = 512
    l2_normalized: bool = False
    dictionary_binding: str = "input"

    def __post_init__(self) -> None:
        if self.image_layout not in IMAGE_LAYOUTS:
            raise BundleFormatError(f"contract image_layout {self.image_layout!r} is not one of {IMAGE_LAYOUTS}")
        if self.dictionary_binding not in DICTIONARY_BINDINGS:
            raise BundleFormatError(
                f"contract dictionary_binding {self.dictionary_binding!r} is not one of {DICTIONARY_BINDINGS}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image as the graph takes it."""
        if self.image_layout == "nhwc-uint8":
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    @property
    def num_cells(self) -> int:
        return int(self.grid["rows"]) * int(self.grid["cols"])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_shape"] = list(self.feature_shape)
        data["inputs"] = {
            "image": IMAGE_INPUT,
            "occlusion": OCCLUSION_INPUT,
            "dictionary": DICTIONARY_INPUT if self.dictionary_binding == "input" else None,
        }
        data["output"] = EMBEDDING_OUTPUT
        data["fdm_op"] = {"domain": FDM_DOMAIN, "name": FDM_OP, "version": FDM_OP_VERSION}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelContract:
        try:
            return cls(
                image_layout=data["image_layout"],
                height=int(data["height"]),
                width=int(data["width"]),
                channels=int(data["channels"]),
                color=str(data["color"]),
                normalization=dict(data["normalization"]),
                grid=dict(data["grid"]),
                feature_shape=tuple(int(n) for n in data["feature_shape"]),  # type: ignore[arg-type]
                embedding_size=int(data["embedding_size"]),
                l2_normalized=bool(data["l2_normalized"]),
                dictionary_binding=data["dictionary_binding"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleFormatError(f"manifest contract is incomplete or malformed: {exc!r}") from None


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's and each installed package's version (missing packages are left out)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_entry(bundle_dir: Path, relative: str) -> dict:
    path = bundle_dir / relative
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Parse and format-check ``manifest.json``; file hashes are checked by the runtime loader."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise FileNotFoundError(
            f"bundle: {str(bundle_dir)!r} is not a directory; expected a bundle written by `pdsn export --out DIR`"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"bundle {bundle_dir} has no {MANIFEST_NAME}; expected a bundle written by `pdsn export`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{path} is not a {BUNDLE_FORMAT} manifest")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleFormatError(
            f"{path} has format_version {version!r}; this pdsn-deploy reads version "
            f"{BUNDLE_FORMAT_VERSION}. Re-export the bundle with this version, or install the "
            f"pdsn-deploy version that wrote it."
        )
    return manifest


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> None:
    """Write the manifest atomically, with a fresh hash for every file it lists."""
    bundle_dir = Path(bundle_dir)
    manifest["files"] = {rel: file_entry(bundle_dir, rel) for rel in sorted(manifest["files"])}
    tmp = bundle_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, bundle_dir / MANIFEST_NAME)


def verify_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists must exist with its recorded size and SHA-256."""
    problems = []
    for relative, entry in manifest.get("files", {}).items():
        file = path / relative
        if not file.is_file():
            problems.append(f"{relative}: missing")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"{relative}: {file.stat().st_size} bytes, manifest records {entry['bytes']} (truncated or replaced)"
            )
        elif (digest := sha256_file(file)) != entry["sha256"]:
            problems.append(
                f"{relative}: SHA-256 {digest[:16]}..., manifest records {entry['sha256'][:16]}... "
                f"(modified after export)"
            )
    if problems:
        raise BundleIntegrityError(
            f"bundle {path} failed its integrity check:\n  "
            + "\n  ".join(problems)
            + "\nRestore the files or re-export the bundle; do not edit bundle files by hand."
        )
