"""``pdsn export``: checkpoint + dictionary -> a verified bundle directory.

The bundle is assembled in a staging folder inside the bundle directory (``BundleWrite``) and its
files are placed only after the ONNX model passed its parity gate; the manifest switch is the one
step that replaces an existing bundle. So a failed export never leaves a half-written bundle and
never touches an existing one, and ``--overwrite`` never leaves the path without a bundle: readers
see the old bundle until the switch, the new one after it, whose files have new names where the
old ones' are taken (the old files are removed after the switch).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pdsn.export.detector_bundle import write_detector
from pdsn.export.onnx_export import ExportOptions, export_onnx
from pdsn.export.parity import ParityError, export_parity, format_parity_table, reference_embeddings
from pdsn.export.trunk_split import HEAD_FILE, TRUNK_FILES, folded_head, write_trunk
from pdsn.model.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    RESERVED_PREFIX,
    BundleIntegrityError,
    package_versions,
)
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.comparison import ExportGate, onnx_embedder, save_reference
from pdsn.model.dictionary import DEFAULT_TAU, MaskDictionary, build_dictionary
from pdsn.model.manifest import Manifest, read_manifest
from pdsn.model.network import LRESNET50E_IR, Architecture
from pdsn.model.recognition import RecognitionNetwork
from pdsn.model.sample_faces import seeded_faces
from pdsn.model.shipped_models import (
    DEMO_WEIGHTS,
    DLIB_CHECKPOINT,
    DLIB_DICTIONARY,
    DLIB_ESTIMATOR,
    DLIB_EVALUATION,
    DLIB_LABEL,
    DLIB_SETUP_HINT,
    DLIB_WEIGHTS,
    DLIB_WEIGHTS_DIGEST,
    SEEDED_WEIGHTS,
    WEIGHTS,
)

MODEL_FILE = "model.onnx"
DICTIONARY_FILE = "dictionary.npy"
PARITY_REPORT = "reports/parity.json"
# PyTorch's embeddings of the parity faces, so `pdsn verify` can check FP32 against PyTorch without torch.
REFERENCE_EMBEDDINGS = "reports/reference-embeddings.npz"


@dataclass(frozen=True)
class ExportRequest:
    out: Path
    checkpoint: Path | None = None
    dictionary: Path | None = None
    architecture: Architecture | None = None
    tau: float | None = None  # binarisation of mean masks (0.25 when neither tau nor threshold is given)
    threshold: float | None = None
    options: ExportOptions = ExportOptions()
    gate: ExportGate = ExportGate()
    seed: int = 0
    parity_faces: int = 8
    overwrite: bool = False
    # Shipped weights instead of a checkpoint (see WEIGHTS); None: the checkpoint, or dlib's without one.
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and self.weights not in WEIGHTS:
            raise ValueError(f"weights {self.weights!r} is not one of {WEIGHTS}")
        if self.weights is not None and self.checkpoint is not None:
            raise ValueError(
                f"--weights {self.weights} replaces a checkpoint: pass --checkpoint or --weights, not both"
            )

    @property
    def shipped(self) -> str | None:
        """The shipped weights exported, or None for a checkpoint."""
        return None if self.checkpoint is not None else (self.weights or DLIB_WEIGHTS)


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    manifest: Manifest
    parity: dict


def export_bundle(request: ExportRequest) -> ExportResult:
    out = Path(request.out)
    _check_destination(out, request.overwrite)
    model, weights = _load_model(request)
    dictionary = _load_dictionary(request, model)

    with BundleWrite(out, "pdsn export", create=True) as write:
        _check_destination(out, request.overwrite)  # again, now that no other writer can change it
        staging = write.staging
        (staging / "reports").mkdir()
        contract = export_onnx(model, dictionary.masks, staging / MODEL_FILE, request.options)
        np.save(staging / DICTIONARY_FILE, dictionary.masks)
        faces = seeded_faces(request.parity_faces, seed=request.seed + 1000, size=(contract.height, contract.width))
        references = reference_embeddings(model, faces, dictionary, contract)
        save_reference(staging / REFERENCE_EMBEDDINGS, faces, references)
        parity = export_parity(str(staging / MODEL_FILE), references, faces, dictionary, contract, request.gate)
        (staging / PARITY_REPORT).write_text(json.dumps(parity, indent=2) + "\n")
        if not parity["passed"]:
            raise ParityError(
                "the exported ONNX model does not reproduce the PyTorch model (gate: cosine >= "
                f"{request.gate.min_cosine}, max abs error <= {request.gate.max_abs_error_ratio} x "
                f"max |reference|); no bundle was written:\n{format_parity_table(parity)}"
            )
        head = folded_head(onnx.load(str(staging / MODEL_FILE)))
        head.save(staging / HEAD_FILE)
        full = onnx_embedder(staging / MODEL_FILE, dictionary.masks, contract)
        trunk_file = TRUNK_FILES["fp32"]
        trunk = write_trunk(
            staging / MODEL_FILE, "fp32", staging / trunk_file, head, full, dictionary.masks, contract, faces
        )
        written = (MODEL_FILE, DICTIONARY_FILE, PARITY_REPORT, REFERENCE_EMBEDDINGS, HEAD_FILE, trunk_file)
        names = {f: write.place(staging / f, f) for f in written}
        detector = write_detector(write)
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"architecture": model.architecture.to_dict(), **weights},
            "contract": contract.to_dict(),
            "dictionary": {"file": names[DICTIONARY_FILE], **dictionary.provenance()},
            "head": {"file": names[HEAD_FILE], "source": "the FP32 model's head Gemm (its BatchNorm1d layers folded)"},
            "variants": {
                "fp32": {
                    "file": names[MODEL_FILE],
                    "precision": "fp32",
                    "opset": request.options.opset,
                    "trunk": {"file": names[trunk_file], "parity": trunk},
                    "parity": {
                        "report": names[PARITY_REPORT],
                        "reference_embeddings": names[REFERENCE_EMBEDDINGS],
                        "against": "pytorch-fp32",
                        "cosine_min": min(p["cosine_min"] for p in parity["patterns"].values()),
                        "max_abs_error": max(p["max_abs_error"] for p in parity["patterns"].values()),
                        "passed": True,
                    },
                }
            },
            "engines": {},
            "detector": detector,
            **_decision(request),
            "provenance": {
                "tools": package_versions(("pdsn-deploy", "torch", "onnx", "onnxruntime", "numpy")),
                "opset": request.options.opset,
                "seed": request.seed,
            },
        }
        write.commit(manifest)
    estimator = _shipped_estimator(request)
    if estimator is not None:  # the shipped models come with an estimator trained for their crops
        from pdsn.export.estimator_bundle import add_estimator

        add_estimator(out, estimator)
    return ExportResult(out, read_manifest(out), parity)


def _dlib_weights():
    """dlib's weights as `scripts/default-model.sh` converted them, checked to be the ones the shipped dictionary,
    estimator and threshold were made for."""
    from pdsn.model.checkpoint import CheckpointError, load_recognition_model, weights_digest

    if not DLIB_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the default model's weights ({DLIB_CHECKPOINT}) are not made yet: {DLIB_SETUP_HINT}")
    model, info = load_recognition_model(DLIB_CHECKPOINT)
    digest = weights_digest(model)
    if digest != DLIB_WEIGHTS_DIGEST:
        raise CheckpointError(
            f"{DLIB_CHECKPOINT} holds other weights than the default model's dictionary, estimator and threshold were "
            f"made for (tensor digest {digest[:16]}..., expected {DLIB_WEIGHTS_DIGEST[:16]}...); remove it and "
            f"{DLIB_SETUP_HINT}"
        )
    return model, info


def _shipped_estimator(request: ExportRequest) -> Path | None:
    if request.shipped == DEMO_WEIGHTS:
        from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR

        return SHIPPED_ESTIMATOR
    return DLIB_ESTIMATOR if request.shipped == DLIB_WEIGHTS else None


def _decision(request: ExportRequest) -> dict:
    """The shipped dlib model's decision threshold, as measured on real pairs (none for other weights)."""
    if request.shipped != DLIB_WEIGHTS:
        return {}
    measured = json.loads(DLIB_EVALUATION.read_text())["decision"]
    return {"decision": {**measured, "source": "scripts/dlib-default-model.sh, on the registry's real photos"}}


def _check_destination(out: Path, overwrite: bool) -> None:
    """``out`` must be missing, empty, or (with ``overwrite``) a bundle; the writers' own files do not count."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the parent directory {out.parent} does not exist")
    held = [p.name for p in out.iterdir() if not p.name.startswith(RESERVED_PREFIX)] if out.is_dir() else []
    if held and not overwrite:
        raise FileExistsError(
            f"--out {out} already exists and is not empty; choose another directory or pass "
            f"--overwrite to replace it (it is replaced only after the new bundle passed its checks)"
        )
    if held and MANIFEST_NAME not in held:
        raise FileExistsError(
            f"--out {out} holds files but no {MANIFEST_NAME}: it is not a bundle, so --overwrite does not "
            f"replace it; choose another directory, or empty this one yourself"
        )
    if held:
        try:
            read_manifest(out)
        except BundleIntegrityError as exc:
            raise FileExistsError(
                f"--out {out}: --overwrite replaces a bundle only after reading which files are its own, and "
                f"this one's manifest cannot be read ({exc}); remove {out} yourself, then export again"
            ) from None


def _load_model(request: ExportRequest) -> tuple[RecognitionNetwork, dict]:
    from pdsn.model import demo_weights
    from pdsn.model.checkpoint import load_recognition_model

    if request.shipped == SEEDED_WEIGHTS:
        architecture = request.architecture or LRESNET50E_IR
        seeded = demo_weights.seeded_model(architecture, seed=request.seed)
        return seeded, {"weights": "seeded", "label": demo_weights.SEEDED_WEIGHTS_LABEL, "checkpoint": None}
    if request.shipped is None:
        assert request.checkpoint is not None  # no shipped weights only with a checkpoint
        model, info = load_recognition_model(request.checkpoint, request.architecture)
        return model, {"weights": "checkpoint", "label": None, "checkpoint": info.to_dict()}
    shipped = {
        DLIB_WEIGHTS: (DLIB_CHECKPOINT, "dlib-face-resnet-v1", DLIB_LABEL),
        DEMO_WEIGHTS: (demo_weights.TRAINED_DEMO_CHECKPOINT, "trained-demo", demo_weights.TRAINED_DEMO_LABEL),
    }
    checkpoint, weights, label = shipped[request.shipped]
    model, info = _dlib_weights() if request.shipped == DLIB_WEIGHTS else load_recognition_model(checkpoint)
    if request.architecture is not None and request.architecture != model.architecture:
        raise ValueError(
            f"the shipped {weights} model is {model.architecture.name}, not {request.architecture.name}; "
            f"pass --checkpoint CKPT for your own {request.architecture.name} weights, or "
            f"--weights seeded for seeded timing weights of that architecture"
        )
    return model, {"weights": weights, "label": label, "checkpoint": info.to_dict()}


def _load_dictionary(request: ExportRequest, model: RecognitionNetwork) -> MaskDictionary:
    from pdsn.model import demo_weights

    feature_shape = model.architecture.feature_shape
    if request.dictionary is not None:
        source = request.dictionary
    elif request.shipped == SEEDED_WEIGHTS:
        if request.threshold is not None:
            raise ValueError("--threshold: the seeded stand-in dictionary is binarised by --tau only")
        tau = DEFAULT_TAU if request.tau is None else request.tau
        return demo_weights.seeded_dictionary(model.architecture, seed=request.seed, tau=tau)  # type: ignore[arg-type]
    elif request.shipped == DEMO_WEIGHTS:
        source = demo_weights.TRAINED_DEMO_DICTIONARY
    elif request.shipped == DLIB_WEIGHTS:
        source = DLIB_DICTIONARY
    else:
        raise ValueError(
            f"--dictionary is required with --checkpoint {request.checkpoint}: the mean_mask.txt "
            f"folder of `pdsn build-dictionary` (or its .npz/.npy); a dictionary extracted for "
            f"another model would mask the wrong features"
        )
    return build_dictionary(source, tau=request.tau, threshold=request.threshold, feature_shape=feature_shape)
