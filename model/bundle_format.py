"""The bundle's on-disk format: ``manifest.json``, file hashes, checked paths and the model contract.

Torch-free: the exporter writes this format and the runtime reads it. The manifest is validated
once, when it is read; every file anyone opens comes from :func:`bundle_file`, which accepts only a
relative path inside the bundle that ``manifest["files"]`` lists with its hash. Every file the
manifest refers to is listed (:func:`referenced_files`), and writers list nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import stat
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

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

_FIX = "re-export the bundle with `pdsn export` (and re-make its variants); do not edit manifest.json by hand"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    def from_dict(cls, data: object) -> ModelContract:
        """The contract of a manifest, every field type-checked; BundleFormatError names the bad key."""
        data = _typed(data, dict, "contract")
        grid = _get(data, "grid", dict, "contract")
        for key in ("rows", "cols"):
            _get(grid, key, int, "contract.grid")
        normalization = _get(data, "normalization", dict, "contract")
        _get(normalization, "scale", float, "contract.normalization")
        for key in ("mean", "std"):
            _channel_values(normalization, key, int(_get(data, "channels", int, "contract")))
        feature_shape = _get(data, "feature_shape", list, "contract")
        if len(feature_shape) != 3 or not all(_is(n, int) and n > 0 for n in feature_shape):
            raise BundleFormatError(f"contract.feature_shape is {feature_shape!r}, expected three positive integers")
        for key in ("height", "width", "channels", "embedding_size"):
            if _get(data, key, int, "contract") < 1:
                raise BundleFormatError(f"contract.{key} is {data[key]}, expected a positive integer")
        contract = cls(
            image_layout=_get(data, "image_layout", str, "contract"),
            height=data["height"],
            width=data["width"],
            channels=data["channels"],
            color=_get(data, "color", str, "contract"),
            normalization=dict(normalization),
            grid=dict(grid),
            feature_shape=tuple(feature_shape),  # type: ignore[arg-type]
            embedding_size=data["embedding_size"],
            l2_normalized=_get(data, "l2_normalized", bool, "contract"),
            dictionary_binding=_get(data, "dictionary_binding", str, "contract"),
            alignment=_optional(data, "alignment", str, "contract") or SIMILARITY_112X96,
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


def read_manifest(bundle_dir: str | os.PathLike, expected_digest: str | None = None) -> dict:
    """Parse, format-check and validate ``manifest.json``; file hashes are checked by ``verify_files``."""
    return load_manifest(bundle_dir, expected_digest)[0]


def load_manifest(bundle_dir: str | os.PathLike, expected_digest: str | None = None) -> tuple[dict, str]:
    """The validated manifest and the SHA-256 of the bytes it was parsed from.

    ``expected_digest``: refuse any manifest but the one with this SHA-256 (see ``manifest_digest``).
    """
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
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_digest is not None:
        if not isinstance(expected_digest, str) or not _SHA256.fullmatch(expected_digest.lower()):
            raise ValueError(f"expected_digest {expected_digest!r}: expected 64 hex digits, as `pdsn verify` prints")
        if digest != expected_digest.lower():
            raise BundleIntegrityError(
                f"bundle {bundle_dir}: {MANIFEST_NAME} has SHA-256 {digest}, but {expected_digest.lower()} was "
                f"pinned; this is not the bundle that was pinned (replaced, or changed and re-hashed). Deploy the "
                f"pinned bundle, or check this one with `pdsn verify` and pin its digest"
            )
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleFormatError(f"{path} nests too deeply to be a {BUNDLE_FORMAT} manifest; {_FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{path} is not a {BUNDLE_FORMAT} manifest")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleFormatError(
            f"{path} has format_version {version!r}; this pdsn-deploy reads version "
            f"{BUNDLE_FORMAT_VERSION}. Re-export the bundle with this version, or install the "
            f"pdsn-deploy version that wrote it."
        )
    try:
        validate_manifest(manifest)
    except BundleFormatError as exc:
        raise BundleFormatError(f"{path} is malformed: {exc}; {_FIX}") from None
    return manifest, digest


def validate_manifest(manifest: dict) -> None:
    """Every key the readers use, with its type; every file the manifest refers to listed with its hash."""
    files = _get(manifest, "files", dict, "")
    if not files:
        raise BundleFormatError("files is empty; a bundle lists every file it uses with its SHA-256 and size")
    for relative, entry in files.items():
        where = f"files[{relative!r}]"
        if problem := _path_problem(relative):
            raise BundleFormatError(f"{where}: the path {problem}")
        if not _SHA256.fullmatch(_get(_typed(entry, dict, where), "sha256", str, where)):
            raise BundleFormatError(f"{where}.sha256 is {entry['sha256']!r}, expected 64 lowercase hex digits")
        if _get(entry, "bytes", int, where) < 0:
            raise BundleFormatError(f"{where}.bytes is {entry['bytes']}, expected a size in bytes")
    ModelContract.from_dict(_get(manifest, "contract", dict, ""))
    model = _get(manifest, "model", dict, "")
    _get(_get(model, "architecture", dict, "model"), "name", str, "model.architecture")
    _get(model, "weights", str, "model")
    _optional(manifest, "provenance", dict, "")
    _get(_get(manifest, "dictionary", dict, ""), "file", str, "dictionary")
    if head := _optional(manifest, "head", dict, ""):
        _get(head, "file", str, "head")
    decision = _optional(manifest, "decision", dict, "")
    if decision and not -1.0 <= _get(decision, "threshold", float, "decision") <= 1.0:
        raise BundleFormatError(f"decision.threshold is {decision['threshold']}, expected a cosine in [-1, 1]")
    if estimator := _optional(manifest, "estimator", dict, ""):
        _get(estimator, "file", str, "estimator")
        _get(_get(estimator, "contract", dict, "estimator"), "thresholds", list, "estimator.contract")
        _optional(_get(estimator, "parity", dict, "estimator"), "report", str, "estimator.parity")
        if evaluation := _optional(estimator, "evaluation", dict, "estimator"):
            _get(evaluation, "report", str, "estimator.evaluation")
            _optional(evaluation, "markdown", str, "estimator.evaluation")
    if detector := _optional(manifest, "detector", dict, ""):
        nets = _get(detector, "files", dict, "detector")
        for net in DETECTOR_NETS:
            _get(nets, net, str, "detector.files")
        _get(detector, "contract", dict, "detector")
        for key in ("licence", "reference"):
            _get(detector, key, str, "detector")
        _get(_get(detector, "conversion", dict, "detector"), "report", str, "detector.conversion")
    for precision, variant in _get(manifest, "variants", dict, "").items():
        where = f"variants.{precision}"
        _get(_typed(variant, dict, where), "file", str, where)
        if trunk := _optional(variant, "trunk", dict, where):
            _get(trunk, "file", str, f"{where}.trunk")
        parity = _get(variant, "parity", dict, where)
        _get(parity, "passed", bool, f"{where}.parity")
        for key in ("report", "reference_embeddings"):
            _optional(parity, key, str, f"{where}.parity")
        _optional(parity, "failures", list, f"{where}.parity")
        if calibration := _optional(variant, "calibration", dict, where):
            _optional(calibration, "cache", str, f"{where}.calibration")
    for key, engine in (_optional(manifest, "engines", dict, "") or {}).items():
        where = f"engines.{key}"
        for name in ("file", "flavour", "version", "precision", "compute_capability"):
            _get(_typed(engine, dict, where), name, str, where)
        profile = _get(engine, "profile", dict, where)
        for name in ("min", "opt", "max"):
            _get(profile, name, int, f"{where}.profile")
        _optional(engine, "version_compatible", bool, where)
        if timing_cache := _optional(engine, "timing_cache", dict, where):
            _get(timing_cache, "file", str, f"{where}.timing_cache")
    for what, relative in referenced_files(manifest).items():
        if problem := _path_problem(relative):
            raise BundleFormatError(f"{what} is {relative!r}: the path {problem}")
        if relative not in files:
            raise BundleFormatError(f"{what} is {relative!r}, which files does not list, so it has no hash to check")


def referenced_files(manifest: dict) -> dict[str, str]:
    """Every file path the manifest refers to, by the key that holds it (e.g. ``variants.int8.file``)."""
    references = {"dictionary.file": manifest["dictionary"]["file"]}
    if manifest.get("head"):
        references["head.file"] = manifest["head"]["file"]
    if manifest.get("estimator"):
        references["estimator.file"] = manifest["estimator"]["file"]
        if manifest["estimator"]["parity"].get("report"):
            references["estimator.parity.report"] = manifest["estimator"]["parity"]["report"]
        for key, path in (manifest["estimator"].get("evaluation") or {}).items():
            if key in ("report", "markdown") and path:
                references[f"estimator.evaluation.{key}"] = path
    if detector := manifest.get("detector"):
        for net in DETECTOR_NETS:
            references[f"detector.files.{net}"] = detector["files"][net]
        references["detector.licence"] = detector["licence"]
        references["detector.reference"] = detector["reference"]
        references["detector.conversion.report"] = detector["conversion"]["report"]
    for precision, variant in manifest["variants"].items():
        references[f"variants.{precision}.file"] = variant["file"]
        if variant.get("trunk"):
            references[f"variants.{precision}.trunk.file"] = variant["trunk"]["file"]
        for key in ("report", "reference_embeddings"):
            if variant["parity"].get(key):
                references[f"variants.{precision}.parity.{key}"] = variant["parity"][key]
        if (variant.get("calibration") or {}).get("cache"):
            references[f"variants.{precision}.calibration.cache"] = variant["calibration"]["cache"]
    for key, engine in (manifest.get("engines") or {}).items():
        references[f"engines.{key}.file"] = engine["file"]
        if engine.get("timing_cache"):
            references[f"engines.{key}.timing_cache.file"] = engine["timing_cache"]["file"]
    return references


def entry_of(manifest: dict, relative: str) -> str:
    """The manifest key that refers to ``relative`` (for messages), or its place in ``files``."""
    return next((what for what, path in referenced_files(manifest).items() if path == relative), f"files[{relative!r}]")


def bundle_file(bundle_dir: str | os.PathLike, manifest: dict, relative: str, what: str) -> Path:
    """The path of a file the manifest refers to as ``what``, checked before anything reads it.

    Refused (BundleIntegrityError): anything but a relative POSIX path inside the bundle, a name that
    ``manifest["files"]`` does not list with its hash, a symbolic link anywhere along the path, a
    missing file or one that is not a regular file.
    """
    bundle_dir = Path(bundle_dir)
    if relative not in manifest["files"]:
        problem: str | None = "is not listed in the manifest's files, so it has no hash to check"
    else:
        problem = file_problem(bundle_dir, relative)
    if problem:
        raise BundleIntegrityError(
            f"bundle {bundle_dir}: manifest entry {what} = {relative!r} {problem}; bundles refer only to "
            f"regular files inside themselves that their manifest lists: {_FIX}"
        )
    return bundle_dir / relative


def file_problem(bundle_dir: Path, relative: str) -> str | None:
    """Why ``relative`` is not a regular file inside ``bundle_dir`` reached without symbolic links, or None."""
    if problem := _path_problem(relative):
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


def _path_problem(relative: str) -> str | None:
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


def verify_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists must be a regular file in the bundle with its recorded size and SHA-256."""
    problems = []
    for relative, entry in manifest["files"].items():
        file = path / relative
        if problem := file_problem(path, relative):
            problems.append(f"{relative}: {problem.removeprefix('is ')}")
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


def leftovers(bundle_dir: Path) -> list[str]:
    """What interrupted writes left at the bundle's top level (staging folders, temporary files)."""
    return sorted(p.name for p in Path(bundle_dir).iterdir() if p.name.startswith((STAGING_PREFIX, TEMP_PREFIX)))


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict) -> None:
    """Switch the bundle to ``manifest``, with a fresh hash for every file its ``files`` names.

    The manifest is validated first, then written to a temporary file, synced and renamed over
    ``manifest.json``: readers see the old manifest or the new one, never a part of either.
    """
    bundle_dir = Path(bundle_dir)
    manifest["files"] = {rel: file_entry(bundle_dir, rel) for rel in sorted(manifest["files"])}
    validate_manifest(manifest)
    write_atomically(bundle_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


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


def _typed(value: object, kind: type, where: str):
    if not _is(value, kind):
        raise BundleFormatError(f"{where} is {type(value).__name__} {_short(value)}, expected {_KINDS[kind]}")
    return value


def _get(data: dict, key: str, kind: type, where: str):
    name = f"{where}.{key}" if where else key
    if key not in data:
        raise BundleFormatError(f"{name} is missing (expected {_KINDS[kind]})")
    return _typed(data[key], kind, name)


def _optional(data: dict, key: str, kind: type, where: str):
    """``data[key]`` when present and not null, type-checked; None otherwise."""
    return None if data.get(key) is None else _get(data, key, kind, where)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
