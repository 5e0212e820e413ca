"""ONNX vs PyTorch parity on the same faces and occlusion patterns, with a pass/fail gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from pdsn.model.bundle_format import DICTIONARY_INPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.model.dictionary import MaskDictionary
from pdsn.model.grid import NUM_CELLS, SCARF_CELLS, SUNGLASSES_CELLS, cells_to_vector
from pdsn.model.network import LResNetIR, normalize_faces

PARITY_PATTERNS: dict[str, tuple[int, ...]] = {
    "none": (),
    "one-cell": (12,),
    "sunglasses": tuple(SUNGLASSES_CELLS),
    "bottom-row": tuple(SCARF_CELLS),
    "all-cells": tuple(range(NUM_CELLS)),
}


@dataclass(frozen=True)
class ExportGate:
    """FP32 export must reproduce PyTorch to float rounding."""

    min_cosine: float = 0.99999
    # Max abs error allowed, relative to the largest reference embedding magnitude.
    max_abs_error_ratio: float = 1e-3


class ParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine similarity (min, mean, 1st percentile) and max abs error between row-paired embeddings."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-30)
    return {
        "count": int(len(reference)),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "max_abs_error": float(np.abs(reference - candidate).max()),
        "reference_max_abs": float(np.abs(reference).max()),
    }


def occlusion_batch(cells: tuple[int, ...], count: int) -> np.ndarray:
    return np.repeat(cells_to_vector(cells)[None, :], count, axis=0)


def pytorch_embeddings(
    model: LResNetIR, faces: np.ndarray, occlusion: np.ndarray, dictionary: MaskDictionary
) -> np.ndarray:
    """The reference computation: normalise, trunk, multiply by the AND of the items, head."""
    mask = torch.from_numpy(dictionary.combine(occlusion).astype(np.float32))
    with torch.no_grad():
        return model.eval()(normalize_faces(faces), mask).numpy()


def onnx_feeds(
    faces: np.ndarray, occlusion: np.ndarray, dictionary: np.ndarray, contract: ModelContract
) -> dict[str, np.ndarray]:
    """Graph inputs for a batch, shaped and typed per the contract."""
    images = faces if contract.image_layout == "nhwc-uint8" else normalize_faces(faces).numpy()
    feeds = {IMAGE_INPUT: images, OCCLUSION_INPUT: occlusion.astype(np.float32)}
    if contract.dictionary_binding == "input":
        feeds[DICTIONARY_INPUT] = dictionary.astype(np.float32)
    return feeds


def onnx_session(path: str):
    """A CPU ONNX Runtime session for checking a model file (not the deployed runtime)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    session, faces: np.ndarray, occlusion: np.ndarray, dictionary: np.ndarray, contract: ModelContract,
    batch: int = 32,
) -> np.ndarray:
    """Embeddings of ``faces`` from an ONNX Runtime session, in batches."""
    return np.concatenate([
        session.run(None, onnx_feeds(faces[i:i + batch], occlusion[i:i + batch], dictionary, contract))[0]
        for i in range(0, len(faces), batch)
    ])


def onnx_embedder(path, dictionary: np.ndarray, contract: ModelContract):
    """``embed(faces, occlusion)`` over one ONNX file on ONNX Runtime's CPU provider."""
    session = onnx_session(str(path))
    return lambda faces, occlusion: run_onnx(session, faces, occlusion, dictionary, contract)


def export_parity(
    model: LResNetIR,
    onnx_path: str,
    dictionary: MaskDictionary,
    contract: ModelContract,
    faces: np.ndarray,
    gate: ExportGate = ExportGate(),
) -> dict:
    """Run both models on ``faces`` under every pattern in PARITY_PATTERNS; report and judge."""
    session = onnx_session(onnx_path)
    patterns = {}
    for name, cells in PARITY_PATTERNS.items():
        occlusion = occlusion_batch(cells, len(faces))
        reference = pytorch_embeddings(model, faces, occlusion, dictionary)
        candidate = run_onnx(session, faces, occlusion, dictionary.masks, contract)
        if contract.l2_normalized:
            reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        metrics = compare_embeddings(reference, candidate)
        metrics["cells"] = list(cells)
        metrics["passed"] = bool(
            metrics["cosine_min"] >= gate.min_cosine
            and metrics["max_abs_error"] <= gate.max_abs_error_ratio * metrics["reference_max_abs"]
        )
        patterns[name] = metrics
    return {
        "compared": "onnxruntime CPU (model.onnx) vs PyTorch eager FP32",
        "faces": int(len(faces)),
        "gate": asdict(gate),
        "patterns": patterns,
        "passed": all(p["passed"] for p in patterns.values()),
    }


def format_parity_table(report: dict) -> str:
    rows = [f"{'pattern':<12} {'cos min':>10} {'cos mean':>10} {'max |err|':>10} {'max |ref|':>10}  result"]
    for name, m in report["patterns"].items():
        rows.append(
            f"{name:<12} {m['cosine_min']:>10.7f} {m['cosine_mean']:>10.7f} "
            f"{m['max_abs_error']:>10.2e} {m['reference_max_abs']:>10.3f}  "
            f"{'pass' if m['passed'] else 'FAIL'}"
        )
    return "\n".join(rows)
