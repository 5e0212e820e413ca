"""The bundle's manifest as a type: read and checked once, then read by attribute everywhere.

``read_manifest`` parses ``manifest.json``, checks every key a reader uses with its type, and
returns a frozen :class:`Manifest` of typed entries (variants, engines, the estimator, the
detector, the contract). Writers change a bundle through the JSON document (``Manifest.document``)
and ``write_manifest``, which checks it the same way before the switch. This is the one place that
knows the schema.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdsn.model.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    DETECTOR_NETS,
    MANIFEST_NAME,
    REEXPORT_FIX,
    SHA256_HEX,
    BundleFormatError,
    BundleIntegrityError,
    ModelContract,
    file_entry,
    file_problem,
    optional,
    path_problem,
    required,
    sha256_file,
    typed,
    write_atomically,
)
from pdsn.model.estimator_contract import ESTIMATOR_IMAGE_INPUT


@dataclass(frozen=True)
class FileRecord:
    """A listed file's SHA-256 and size in bytes."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Parity:
    """How a variant compared with its reference when it was made."""

    passed: bool
    report: str | None
    reference_embeddings: str | None
    failures: tuple[str, ...]
    gate: Mapping | None  # the gate it was made under (``pdsn quantize --min-cosine`` etc.); None: the default
    cosine_mean: float | None  # over the held-out faces (variants made by ``pdsn quantize``)
    cosine_p1: float | None
    record: Mapping  # the whole record, as reports show it


@dataclass(frozen=True)
class Variant:
    """One precision's ONNX model (and its trunk, cut before the mask step)."""

    precision: str
    file: str
    trunk_file: str | None
    parity: Parity
    calibration_cache: str | None


@dataclass(frozen=True)
class BatchProfile:
    """An engine's optimization profile: the batch sizes it takes."""

    min: int
    opt: int
    max: int

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class Engine:
    """A TensorRT engine built from one variant for one GPU and TensorRT version."""

    key: str
    file: str
    flavour: str
    version: str
    precision: str
    compute_capability: str
    profile: BatchProfile
    version_compatible: bool
    timing_cache_file: str | None
    built: str | None  # ISO 8601; engines of older writers record none
    fdm_impl: str
    inputs: Mapping[str, list] | None  # the inputs it binds, by name, with their shapes; older writers record none
    variant_sha256: str  # the SHA-256 of the ONNX variant it was built from

    @classmethod
    def from_record(cls, key: str, record: Any) -> Engine:
        """The engine recorded as ``engines[key]``, every field type-checked."""
        where = f"engines.{key}"
        record = typed(record, dict, where)
        text = {name: required(record, name, str, where) for name in ("file", "flavour", "version", "precision")}
        profile = required(record, "profile", dict, where)
        timing_cache = optional(record, "timing_cache", dict, where)
        inputs = optional(record, "inputs", dict, where)
        return cls(
            key=key,
            compute_capability=required(record, "compute_capability", str, where),
            profile=BatchProfile(*(required(profile, name, int, f"{where}.profile") for name in ("min", "opt", "max"))),
            version_compatible=bool(optional(record, "version_compatible", bool, where)),
            timing_cache_file=required(timing_cache, "file", str, f"{where}.timing_cache") if timing_cache else None,
            built=optional(record, "built", str, where),
            fdm_impl=optional(record, "fdm_impl", str, where) or "native",
            inputs=inputs,
            variant_sha256=required(required(record, "variant", dict, where), "sha256", str, f"{where}.variant"),
            **text,
        )


@dataclass(frozen=True)
class Estimator:
    """The occlusion estimator: the occluded cells from the pixels."""

    file: str
    thresholds: tuple[float, ...]
    grid: Mapping | None  # the grid it speaks of, to match the model's
    image_shape: tuple  # one image as it takes it, to match the model's crops
    parity_report: str | None
    evaluation_report: str | None
    evaluation_markdown: str | None


@dataclass(frozen=True)
class Detector:
    """The face detector's three nets and what they were checked against when placed."""

    files: Mapping[str, str]  # net name -> file
    contract: Mapping
    licence: str
    reference: str
    conversion_report: str


@dataclass(frozen=True)
class Decision:
    """The cosine at or above which two faces are one person, as measured on real pairs."""

    threshold: float
    same_pairs: int
    different_pairs: int
    far: float
    frr: float
    faces: int  # the faces and people the pairs were made of
    people: int


@dataclass(frozen=True)
class ModelRecord:
    """Which network and weights the bundle holds."""

    architecture: Mapping  # read by ``Architecture.from_dict``
    weights: str
    label: str | None
    checkpoint_path: str | None
    seed: int | None  # the seed of seeded weights

    @property
    def name(self) -> str:
        return str(self.architecture["name"])


@dataclass(frozen=True)
class Manifest:
    """A bundle's checked manifest."""

    files: Mapping[str, FileRecord]
    contract: ModelContract
    model: ModelRecord
    dictionary_file: str
    head_file: str | None
    decision: Decision | None
    estimator: Estimator | None
    detector: Detector | None
    variants: Mapping[str, Variant]
    engines: Mapping[str, Engine]
    _document: Mapping = field(repr=False)  # the JSON document, for writers (Manifest.document)

    @classmethod
    def from_document(cls, document: dict, listed: bool = True) -> Manifest:
        """Check ``document`` (a parsed manifest.json) and type it; BundleFormatError names the bad key.

        ``listed=False``: leave its ``files`` out (a writer's document before its files are listed).
        """
        files = _files(document) if listed else {}
        contract = ModelContract.from_dict(required(document, "contract", dict, ""))
        dictionary = required(document, "dictionary", dict, "")
        head = optional(document, "head", dict, "")
        manifest = cls(
            files=files,
            contract=contract,
            model=_model(required(document, "model", dict, ""), optional(document, "provenance", dict, "")),
            dictionary_file=required(dictionary, "file", str, "dictionary"),
            head_file=required(head, "file", str, "head") if head else None,
            decision=_decision(optional(document, "decision", dict, "")),
            estimator=_estimator(optional(document, "estimator", dict, "")),
            detector=_detector(optional(document, "detector", dict, "")),
            variants={p: _variant(p, v) for p, v in required(document, "variants", dict, "").items()},
            engines={k: Engine.from_record(k, e) for k, e in (optional(document, "engines", dict, "") or {}).items()},
            _document=copy.deepcopy(document),
        )
        for what, relative in manifest.referenced_files().items():
            if problem := path_problem(relative):
                raise BundleFormatError(f"{what} is {relative!r}: the path {problem}")
            if listed and relative not in files:
                raise BundleFormatError(
                    f"{what} is {relative!r}, which files does not list, so it has no hash to check"
                )
        return manifest

    def document(self) -> dict:
        """A copy of the JSON document, for a writer to change and hand to ``write_manifest``."""
        return copy.deepcopy(dict(self._document))

    def variant_id(self, precision: str) -> str:
        """``name@`` the first 12 hex digits of the variant ``precision``'s SHA-256: what answers were computed
        with (the service's ``model``)."""
        return f"{self.model.name}@{self.sha256_of(self.variants[precision].file)[:12]}"

    @property
    def fingerprint(self) -> tuple[str, str]:
        """The SHA-256 of the FP32 model and of the dictionary: what a gallery's embeddings are bound to."""
        return self.sha256_of(self.variants["fp32"].file), self.sha256_of(self.dictionary_file)

    def sha256_of(self, relative: str) -> str:
        return self.files[relative].sha256

    def engines_of(self, flavour: str) -> list[Engine]:
        return [e for e in self.engines.values() if e.flavour == flavour]

    def referenced_files(self) -> dict[str, str]:
        """Every file path the manifest refers to, by the key that holds it (e.g. ``variants.int8.file``)."""
        references = {"dictionary.file": self.dictionary_file}
        if self.head_file:
            references["head.file"] = self.head_file
        if estimator := self.estimator:
            references["estimator.file"] = estimator.file
            optional = {
                "estimator.parity.report": estimator.parity_report,
                "estimator.evaluation.report": estimator.evaluation_report,
                "estimator.evaluation.markdown": estimator.evaluation_markdown,
            }
            references.update({key: path for key, path in optional.items() if path})
        if detector := self.detector:
            for net in DETECTOR_NETS:
                references[f"detector.files.{net}"] = detector.files[net]
            references["detector.licence"] = detector.licence
            references["detector.reference"] = detector.reference
            references["detector.conversion.report"] = detector.conversion_report
        for precision, variant in self.variants.items():
            where = f"variants.{precision}"
            optional = {
                f"{where}.file": variant.file,
                f"{where}.trunk.file": variant.trunk_file,
                f"{where}.parity.report": variant.parity.report,
                f"{where}.parity.reference_embeddings": variant.parity.reference_embeddings,
                f"{where}.calibration.cache": variant.calibration_cache,
            }
            references.update({key: path for key, path in optional.items() if path})
        for key, engine in self.engines.items():
            references[f"engines.{key}.file"] = engine.file
            if engine.timing_cache_file:
                references[f"engines.{key}.timing_cache.file"] = engine.timing_cache_file
        return references

    def entry_of(self, relative: str) -> str:
        """The manifest key that refers to ``relative`` (for messages), or its place in ``files``."""
        return next(
            (what for what, path in self.referenced_files().items() if path == relative), f"files[{relative!r}]"
        )


def _files(document: dict) -> dict[str, FileRecord]:
    files = required(document, "files", dict, "")
    if not files:
        raise BundleFormatError("files is empty; a bundle lists every file it uses with its SHA-256 and size")
    records = {}
    for relative, entry in files.items():
        where = f"files[{relative!r}]"
        if problem := path_problem(relative):
            raise BundleFormatError(f"{where}: the path {problem}")
        digest = required(typed(entry, dict, where), "sha256", str, where)
        if not SHA256_HEX.fullmatch(digest):
            raise BundleFormatError(f"{where}.sha256 is {digest!r}, expected 64 lowercase hex digits")
        if (size := required(entry, "bytes", int, where)) < 0:
            raise BundleFormatError(f"{where}.bytes is {size}, expected a size in bytes")
        records[relative] = FileRecord(digest, size)
    return records


def _model(model: dict, provenance: dict | None) -> ModelRecord:
    architecture = required(model, "architecture", dict, "model")
    required(architecture, "name", str, "model.architecture")
    checkpoint = optional(model, "checkpoint", dict, "model")
    return ModelRecord(
        architecture=architecture,
        weights=required(model, "weights", str, "model"),
        label=optional(model, "label", str, "model"),
        checkpoint_path=optional(checkpoint, "path", str, "model.checkpoint") if checkpoint else None,
        seed=optional(provenance, "seed", int, "provenance") if provenance else None,
    )


def _decision(decision: dict | None) -> Decision | None:
    if not decision:
        return None
    threshold = float(required(decision, "threshold", float, "decision"))
    if not -1.0 <= threshold <= 1.0:
        raise BundleFormatError(f"decision.threshold is {threshold}, expected a cosine in [-1, 1]")
    return Decision(
        threshold=threshold,
        same_pairs=required(decision, "same_pairs", int, "decision"),
        different_pairs=required(decision, "different_pairs", int, "decision"),
        far=float(required(decision, "far", float, "decision")),
        frr=float(required(decision, "frr", float, "decision")),
        faces=required(decision, "faces", int, "decision"),
        people=required(decision, "people", int, "decision"),
    )


def _estimator(estimator: dict | None) -> Estimator | None:
    if not estimator:
        return None
    contract = required(estimator, "contract", dict, "estimator")
    thresholds = required(contract, "thresholds", list, "estimator.contract")
    inputs = optional(contract, "inputs", dict, "estimator.contract") or {}
    image = optional(inputs, ESTIMATOR_IMAGE_INPUT, dict, "estimator.contract.inputs") or {}
    shape = optional(image, "shape", list, f"estimator.contract.inputs.{ESTIMATOR_IMAGE_INPUT}") or []
    evaluation = optional(estimator, "evaluation", dict, "estimator") or {}
    return Estimator(
        file=required(estimator, "file", str, "estimator"),
        thresholds=tuple(thresholds),
        grid=optional(contract, "grid", dict, "estimator.contract"),
        image_shape=tuple(shape[1:]),
        parity_report=optional(required(estimator, "parity", dict, "estimator"), "report", str, "estimator.parity"),
        evaluation_report=required(evaluation, "report", str, "estimator.evaluation") if evaluation else None,
        evaluation_markdown=optional(evaluation, "markdown", str, "estimator.evaluation"),
    )


def _detector(detector: dict | None) -> Detector | None:
    if not detector:
        return None
    nets = required(detector, "files", dict, "detector")
    return Detector(
        files={net: required(nets, net, str, "detector.files") for net in DETECTOR_NETS},
        contract=required(detector, "contract", dict, "detector"),
        licence=required(detector, "licence", str, "detector"),
        reference=required(detector, "reference", str, "detector"),
        conversion_report=required(
            required(detector, "conversion", dict, "detector"), "report", str, "detector.conversion"
        ),
    )


def _variant(precision: str, variant: Any) -> Variant:
    where = f"variants.{precision}"
    variant = typed(variant, dict, where)
    trunk = optional(variant, "trunk", dict, where)
    parity = required(variant, "parity", dict, where)
    calibration = optional(variant, "calibration", dict, where)
    return Variant(
        precision=precision,
        file=required(variant, "file", str, where),
        trunk_file=required(trunk, "file", str, f"{where}.trunk") if trunk else None,
        parity=Parity(
            passed=required(parity, "passed", bool, f"{where}.parity"),
            report=optional(parity, "report", str, f"{where}.parity"),
            reference_embeddings=optional(parity, "reference_embeddings", str, f"{where}.parity"),
            failures=tuple(optional(parity, "failures", list, f"{where}.parity") or ()),
            gate=optional(parity, "gate", dict, f"{where}.parity"),
            cosine_mean=optional(parity, "cosine_mean", float, f"{where}.parity"),
            cosine_p1=optional(parity, "cosine_p1", float, f"{where}.parity"),
            record=parity,
        ),
        calibration_cache=optional(calibration, "cache", str, f"{where}.calibration") if calibration else None,
    )


def read_manifest(bundle_dir: str | os.PathLike, expected_digest: str | None = None) -> Manifest:
    """Parse, format-check and type ``manifest.json``; file hashes are checked by ``verify_files``."""
    return load_manifest(bundle_dir, expected_digest)[0]


def load_manifest(bundle_dir: str | os.PathLike, expected_digest: str | None = None) -> tuple[Manifest, str]:
    """The checked manifest and the SHA-256 of the bytes it was parsed from.

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
        if not isinstance(expected_digest, str) or not SHA256_HEX.fullmatch(expected_digest.lower()):
            raise ValueError(f"expected_digest {expected_digest!r}: expected 64 hex digits, as `pdsn verify` prints")
        if digest != expected_digest.lower():
            raise BundleIntegrityError(
                f"bundle {bundle_dir}: {MANIFEST_NAME} has SHA-256 {digest}, but {expected_digest.lower()} was "
                f"pinned; this is not the bundle that was pinned (replaced, or changed and re-hashed). Deploy the "
                f"pinned bundle, or check this one with `pdsn verify` and pin its digest"
            )
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleFormatError(f"{path} nests too deeply to be a {BUNDLE_FORMAT} manifest; {REEXPORT_FIX}") from None
    if not isinstance(document, dict) or document.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{path} is not a {BUNDLE_FORMAT} manifest")
    version = document.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleFormatError(
            f"{path} has format_version {version!r}; this pdsn-deploy reads version "
            f"{BUNDLE_FORMAT_VERSION}. Re-export the bundle with this version, or install the "
            f"pdsn-deploy version that wrote it."
        )
    try:
        return Manifest.from_document(document), digest
    except BundleFormatError as exc:
        raise BundleFormatError(f"{path} is malformed: {exc}; {REEXPORT_FIX}") from None


def write_manifest(bundle_dir: str | os.PathLike, document: dict) -> Manifest:
    """Switch the bundle to the manifest ``document``, with a fresh hash for every file its ``files`` names.

    The document is checked first, then written to a temporary file, synced and renamed over
    ``manifest.json``: readers see the old manifest or the new one, never a part of either.
    """
    bundle_dir = Path(bundle_dir)
    document["files"] = {rel: file_entry(bundle_dir, rel) for rel in sorted(document["files"])}
    manifest = Manifest.from_document(document)
    write_atomically(bundle_dir / MANIFEST_NAME, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return manifest


def bundle_file(bundle_dir: str | os.PathLike, manifest: Manifest, relative: str, what: str) -> Path:
    """The path of a file the manifest refers to as ``what``, checked before anything reads it.

    Refused (BundleIntegrityError): anything but a relative POSIX path inside the bundle, a name that
    the manifest's files do not list with its hash, a symbolic link anywhere along the path, a
    missing file or one that is not a regular file.
    """
    bundle_dir = Path(bundle_dir)
    if relative not in manifest.files:
        problem: str | None = "is not listed in the manifest's files, so it has no hash to check"
    else:
        problem = file_problem(bundle_dir, relative)
    if problem:
        raise BundleIntegrityError(
            f"bundle {bundle_dir}: manifest entry {what} = {relative!r} {problem}; bundles refer only to "
            f"regular files inside themselves that their manifest lists: {REEXPORT_FIX}"
        )
    return bundle_dir / relative


def verify_files(path: Path, manifest: Manifest) -> None:
    """Every file the manifest lists must be a regular file in the bundle with its recorded size and SHA-256."""
    problems = []
    for relative, entry in manifest.files.items():
        file = path / relative
        if problem := file_problem(path, relative):
            problems.append(f"{relative}: {problem.removeprefix('is ')}")
        elif file.stat().st_size != entry.bytes:
            problems.append(
                f"{relative}: {file.stat().st_size} bytes, manifest records {entry.bytes} (truncated or replaced)"
            )
        elif (digest := sha256_file(file)) != entry.sha256:
            problems.append(
                f"{relative}: SHA-256 {digest[:16]}..., manifest records {entry.sha256[:16]}... (modified after export)"
            )
    if problems:
        raise BundleIntegrityError(
            f"bundle {path} failed its integrity check:\n  "
            + "\n  ".join(problems)
            + "\nRestore the files or re-export the bundle; do not edit bundle files by hand."
        )
