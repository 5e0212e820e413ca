"""The bundle's on-disk format: names, file hashes, checked paths, atomic writes and the model contract.

Torch-free: the exporter writes this format and the runtime reads it. The manifest itself, read and
checked once into a type, is :mod:`pdsn.model.manifest`; the checks here (``required``,
``optional``, ``typed``) are the ones it and the contract share.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import secrets
import stat
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pdsn.errors import PdsnError
from pdsn.model.crop_alignment import CROP_ALIGNMENTS, SIMILARITY_112X96
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, grid_for

BUNDLE_FORMAT = "pdsn-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Names a bundle's writers keep for themselves at the bundle's top level; never listed as files.
RESERVED_PREFIX = ".pdsn-"
LOCK_NAME = RESERVED_PREFIX + "write.lock"
STAGING_PREFIX = RESERVED_PREFIX + "staging-"  # a writer's staging folder, left behind only by a killed writer
TEMP_PREFIX = RESERVED_PREFIX + "tmp-"  # a file being written atomically

FDM_DOMAIN = "ai.pdsn"
FDM_OP = "FdmGatherMul"
FDM_OP_VERSION = 1

IMAGE_INPUT = "image"
OCCLUSION_INPUT = "occlusion"
DICTIONARY_INPUT = "fdm_dictionary"
# The FDM plugin's engines take the dictionary bit-packed (pdsn.kernels.fdm_pack) under this name.
PACKED_DICTIONARY_INPUT = "fdm_dictionary_packed"
EMBEDDING_OUTPUT = "embedding"
# The trunk model (the recognition model cut before the FDM op) outputs the feature map.
FEATURES_OUTPUT = "features"

IMAGE_LAYOUTS = ("nhwc-uint8", "nchw-float32")
DICTIONARY_BINDINGS = ("input", "embedded")
DETECTOR_NETS = ("pnet", "rnet", "onet")

REEXPORT_FIX = "re-export the bundle with `pdsn export` (and re-make its variants); do not edit manifest.json by hand"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BundleIntegrityError(PdsnError, ValueError):
    """A bundle file is missing, altered or inconsistent with the manifest."""


class BundleFormatError(BundleIntegrityError):
    """A manifest that this version of pdsn-deploy cannot read."""


@dataclass(frozen=True)
class ModelContract:
    """What a caller must feed the model and what it gets back (docs/architecture.md, "The ONNX contract")."""

    image_layout: str = "nhwc-uint8"
    height: int = CROP_HEIGHT
    width: int = CROP_WIDTH
    channels: int = 3
    color: str = "RGB"
    # x_float = (x_uint8 / scale - mean) / std, done inside the graph for uint8 input; mean and std are
    # one number or one per channel.
    normalization: dict = field(default_factory=lambda: {"scale": 255.0, "mean": 0.5, "std": 0.5})
    grid: dict = field(default_factory=lambda: grid_for(CROP_HEIGHT, CROP_WIDTH))
    feature_shape: tuple[int, int, int] = (512, 7, 6)
    embedding_size: int = 512
    l2_normalized: bool = False
    dictionary_binding: str = "input"
    # How a face is cut from a photo by its five landmarks (pdsn.model.alignment.CROP_ALIGNMENTS).
    alignment: str = SIMILARITY_112X96

    def __post_init__(self) -> None:
        if self.image_layout not in IMAGE_LAYOUTS:
            raise BundleFormatError(f"contract image_layout {self.image_layout!r} is not one of {IMAGE_LAYOUTS}")
        if self.dictionary_binding not in DICTIONARY_BINDINGS:
            raise BundleFormatError(
                f"contract dictionary_binding {self.dictionary_binding!r} is not one of {DICTIONARY_BINDINGS}"
            )
        if self.alignment not in CROP_ALIGNMENTS:
            raise BundleFormatError(
                f"contract alignment {self.alignment!r} is not one of {tuple(CROP_ALIGNMENTS)}; this bundle needs "
                f"a newer pdsn-deploy"
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

    def normalized_nchw(self, faces: np.ndarray) -> np.ndarray:
        """uint8 NHWC faces -> float32 NCHW normalised as ``normalization`` says (the float-input layout)."""
        x = np.ascontiguousarray(faces).transpose(0, 3, 1, 2).astype(np.float32)
        scale, mean, std = (self._per_channel(self.normalization[key]) for key in ("scale", "mean", "std"))
        return np.ascontiguousarray((x / scale - mean) / std)

    @staticmethod
    def _per_channel(value: float | list) -> np.ndarray:
        return np.asarray(value, dtype=np.float32).reshape(-1, 1, 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_shape"] = list(self.feature_shape)
        data["inputs"] = _input_names(self.dictionary_binding)
        data["output"] = EMBEDDING_OUTPUT
        data["fdm_op"] = {"domain": FDM_DOMAIN, "name": FDM_OP, "version": FDM_OP_VERSION}
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelContract:
        """The contract of a manifest, every field type-checked; BundleFormatError names the bad key."""
        data = typed(data, dict, "contract")
        grid = required(data, "grid", dict, "contract")
        for key in ("rows", "cols"):
            required(grid, key, int, "contract.grid")
        normalization = required(data, "normalization", dict, "contract")
        required(normalization, "scale", float, "contract.normalization")
        for key in ("mean", "std"):
            _channel_values(normalization, key, int(required(data, "channels", int, "contract")))
        feature_shape = required(data, "feature_shape", list, "contract")
        if len(feature_shape) != 3 or not all(_is(n, int) and n > 0 for n in feature_shape):
            raise BundleFormatError(f"contract.feature_shape is {feature_shape!r}, expected three positive integers")
        for key in ("height", "width", "channels", "embedding_size"):
            if required(data, key, int, "contract") < 1:
                raise BundleFormatError(f"contract.{key} is {data[key]}, expected a positive integer")
        contract = cls(
            image_layout=required(data, "image_layout", str, "contract"),
            height=data["height"],
            width=data["width"],
            channels=data["channels"],
            color=required(data, "color", str, "contract"),
            normalization=dict(normalization),
            grid=dict(grid),
            feature_shape=tuple(feature_shape),
            embedding_size=data["embedding_size"],
            l2_normalized=required(data, "l2_normalized", bool, "contract"),
            dictionary_binding=required(data, "dictionary_binding", str, "contract"),
            alignment=optional(data, "alignment", str, "contract") or SIMILARITY_112X96,
        )
        names = {"inputs": _input_names(contract.dictionary_binding), "output": EMBEDDING_OUTPUT}
        for key, expected in names.items():
            if data.get(key) != expected:
                raise BundleFormatError(
                    f"contract.{key} is {data.get(key)!r}, but this pdsn-deploy binds {expected!r} "
                    f"(dictionary_binding {contract.dictionary_binding!r})"
                )
        return contract


def _channel_values(normalization: dict, key: str, channels: int) -> None:
    """``normalization[key]`` is one number or a list of one number per channel."""
    value = normalization.get(key)
    if _is(value, float) or (isinstance(value, list) and len(value) == channels and all(_is(v, float) for v in value)):
        return
    raise BundleFormatError(
        f"contract.normalization.{key} is {_short(value)}, expected a number or a list of {channels} numbers"
    )


def _input_names(dictionary_binding: str) -> dict:
    dictionary = DICTIONARY_INPUT if dictionary_binding == "input" else None
    return {"image": IMAGE_INPUT, "occlusion": OCCLUSION_INPUT, "dictionary": dictionary}


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


def manifest_digest(bundle_dir: str | os.PathLike) -> str:
    """SHA-256 of ``manifest.json``'s bytes: pin it to detect a bundle replaced with consistent hashes."""
    return sha256_file(Path(bundle_dir) / MANIFEST_NAME)


def file_problem(bundle_dir: Path, relative: str) -> str | None:
    """Why ``relative`` is not a regular file inside ``bundle_dir`` reached without symbolic links, or None."""
    if problem := path_problem(relative):
        return problem
    path = bundle_dir
    for part in relative.split("/"):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return "is missing"
        if stat.S_ISLNK(mode):
            return f"passes through the symbolic link {path.relative_to(bundle_dir)} (bundles hold regular files only)"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def path_problem(relative: str) -> str | None:
    """Why ``relative`` is not a plain relative POSIX path that names no reserved file, or None."""
    if not relative:
        return "is empty"
    if "\\" in relative or "\0" in relative or re.match(r"[A-Za-z]:", relative):
        return "has a backslash, NUL or drive letter (expected a relative path with forward slashes)"
    if relative.startswith("/"):
        return "is absolute (expected a path relative to the bundle)"
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' component (expected a path inside the bundle)"
    if parts[0] == MANIFEST_NAME or parts[0].startswith(RESERVED_PREFIX):
        return f"names {parts[0]}, which is the manifest or a writer's own file"
    return None


def leftovers(bundle_dir: Path) -> list[str]:
    """What interrupted writes left at the bundle's top level (staging folders, temporary files)."""
    return sorted(p.name for p in Path(bundle_dir).iterdir() if p.name.startswith((STAGING_PREFIX, TEMP_PREFIX)))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file in the same folder and one rename."""
    temporary = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        with open(temporary, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _is(value: object, kind: type) -> bool:
    """``isinstance``, except that true/false is no integer and an integer is a number."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true/false"}


def typed(value: object, kind: type, where: str) -> Any:
    if not _is(value, kind):
        raise BundleFormatError(f"{where} is {type(value).__name__} {_short(value)}, expected {_KINDS[kind]}")
    return value


def required(data: dict, key: str, kind: type, where: str) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in data:
        raise BundleFormatError(f"{name} is missing (expected {_KINDS[kind]})")
    return typed(data[key], kind, name)


def optional(data: dict, key: str, kind: type, where: str) -> Any:
    """``data[key]`` when present and not null, type-checked; None otherwise."""
    return None if data.get(key) is None else required(data, key, kind, where)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
