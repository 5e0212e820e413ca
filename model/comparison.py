"""Comparing embeddings, and running an ONNX model file to compare it (torch-free).

Export, calibration, engine building and ``pdsn verify`` all judge a model by the embeddings it
gives on the same faces and occlusion patterns; this is the shared, torch-free part of that. ONNX
Runtime is imported only when a model file is run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdsn.model.bundle_format import DICTIONARY_INPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.model.folded_head import FoldedHead
from pdsn.model.grid import NUM_CELLS, SCARF_CELLS, SUNGLASSES_CELLS, cells_to_vector

# The occlusion patterns every comparison covers: none, one cell, the named occlusions, all cells.
PARITY_PATTERNS: dict[str, tuple[int, ...]] = {
    "none": (),
    "one-cell": (12,),
    "sunglasses": tuple(SUNGLASSES_CELLS),
    "bottom-row": tuple(SCARF_CELLS),
    "all-cells": tuple(range(NUM_CELLS)),
}

Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportGate:
    """An FP32 model must reproduce the PyTorch reference to float rounding, on every pattern."""

    min_cosine: float = 0.99999
    # Max abs error allowed, relative to the largest reference embedding magnitude.
    max_abs_error_ratio: float = 1e-3


def judge_against_reference(
    references: dict[str, tuple[tuple[int, ...], np.ndarray]],
    embed: Embed,
    faces: np.ndarray,
    gate: ExportGate,
    compared: str,
) -> dict:
    """Embed ``faces`` under each pattern and judge them against the reference embeddings.

    ``references`` maps a pattern name to its occluded cells and the reference's embeddings of
    ``faces`` under them (e.g. PyTorch's, recorded in the bundle at export).
    """
    patterns, expected, got = {}, [], []
    for name, (cells, reference) in references.items():
        embeddings = embed(faces, occlusion_batch(cells, len(faces)))
        metrics = compare_embeddings(reference, embeddings)
        metrics["cells"] = list(cells)
        metrics["passed"] = bool(
            metrics["cosine_min"] >= gate.min_cosine
            and metrics["max_abs_error"] <= gate.max_abs_error_ratio * metrics["reference_max_abs"]
        )
        patterns[name] = metrics
        expected.append(reference)
        got.append(embeddings)
    failures = [
        f"{name}: cosine min {p['cosine_min']:.7f}, max |err| {p['max_abs_error']:.2e}"
        for name, p in patterns.items()
        if not p["passed"]
    ]
    return {
        "compared": compared,
        "faces": len(faces),
        "gate": asdict(gate),
        "patterns": patterns,
        "overall": compare_embeddings(np.concatenate(expected), np.concatenate(got)),
        "passed": not failures,
        "failures": failures,
    }


def split_parity(
    full: Embed,
    features: Callable[[np.ndarray], np.ndarray],
    head: FoldedHead,
    dictionary: np.ndarray,
    faces: np.ndarray,
    contract: ModelContract,
    min_cosine: float = 0.99999,
) -> dict:
    """The trunk's features through the folded head against the full model, on every parity pattern.

    Both sides run the same variant, so they differ only by where the head is computed: the gate
    is float rounding (``min_cosine``) on every pattern.
    """
    flat = features(faces).reshape(len(faces), -1)
    discard = 1.0 - dictionary.reshape(len(dictionary), -1)
    patterns = {}
    for name, cells in PARITY_PATTERNS.items():
        discarded = np.flatnonzero(discard[list(cells)].sum(axis=0) > 0) if cells else np.zeros(0, np.int64)
        split = head.masked(flat, discarded, base=None)
        if contract.l2_normalized:
            split = split / np.linalg.norm(split, axis=1, keepdims=True)
        metrics = compare_embeddings(full(faces, occlusion_batch(cells, len(faces))), split)
        metrics["passed"] = metrics["cosine_min"] >= min_cosine
        patterns[name] = metrics
    failures = [f"{name}: cosine min {p['cosine_min']:.7f}" for name, p in patterns.items() if not p["passed"]]
    return {"gate": {"min_cosine": min_cosine}, "patterns": patterns, "passed": not failures, "failures": failures}


def save_reference(
    path: str | Path, faces: np.ndarray, references: dict[str, tuple[tuple[int, ...], np.ndarray]]
) -> None:
    """Write the reference faces and their embeddings per pattern (an ``.npz``), for later checks."""
    arrays = {"faces": faces}
    for name, (cells, embeddings) in references.items():
        arrays[f"cells__{name}"] = np.asarray(cells, dtype=np.int64)
        arrays[f"embedding__{name}"] = embeddings.astype(np.float32)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict might fill allow_pickle


def load_reference(path: str | Path) -> tuple[np.ndarray, dict[str, tuple[tuple[int, ...], np.ndarray]]]:
    """The faces and per-pattern reference embeddings ``save_reference`` wrote."""
    with np.load(path, allow_pickle=False) as data:
        names = [key.removeprefix("embedding__") for key in data.files if key.startswith("embedding__")]
        references = {
            name: (tuple(int(c) for c in data[f"cells__{name}"]), data[f"embedding__{name}"]) for name in names
        }
        return data["faces"], references


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine similarity (min, mean, 1st percentile) and max abs error between row-paired embeddings.

    Two zero rows count as cosine 1 (a head without a bias maps fully masked features to zero, and so
    must the candidate); a zero row against a non-zero one counts as 0."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    both_zero = ~reference.any(axis=1) & ~candidate.any(axis=1)
    cosine = np.where(both_zero, 1.0, np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-30))
    return {
        "count": len(reference),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "max_abs_error": float(np.abs(reference - candidate).max()),
        "reference_max_abs": float(np.abs(reference).max()),
    }


def occlusion_batch(cells: tuple[int, ...], count: int) -> np.ndarray:
    """``count`` identical occlusion rows with ``cells`` set."""
    return np.repeat(cells_to_vector(cells)[None, :], count, axis=0)


def onnx_feeds(
    faces: np.ndarray, occlusion: np.ndarray, dictionary: np.ndarray, contract: ModelContract
) -> dict[str, np.ndarray]:
    """Graph inputs for a batch of uint8 faces, shaped and typed per the contract."""
    images = faces if contract.image_layout == "nhwc-uint8" else contract.normalized_nchw(faces)
    feeds = {IMAGE_INPUT: images, OCCLUSION_INPUT: occlusion.astype(np.float32)}
    if contract.dictionary_binding == "input":
        feeds[DICTIONARY_INPUT] = dictionary.astype(np.float32)
    return feeds


def onnx_session(path: str | Path):
    """A CPU ONNX Runtime session for checking a model file (not the deployed runtime)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    session,
    faces: np.ndarray,
    occlusion: np.ndarray,
    dictionary: np.ndarray,
    contract: ModelContract,
    batch: int = 32,
) -> np.ndarray:
    """Embeddings of ``faces`` from an ONNX Runtime session, in batches."""
    return np.concatenate(
        [
            session.run(None, onnx_feeds(faces[i : i + batch], occlusion[i : i + batch], dictionary, contract))[0]
            for i in range(0, len(faces), batch)
        ]
    )


def onnx_embedder(path: str | Path, dictionary: np.ndarray, contract: ModelContract) -> Embed:
    """``embed(faces, occlusion)`` over one ONNX file on ONNX Runtime's CPU provider."""
    session = onnx_session(path)
    return lambda faces, occlusion: run_onnx(session, faces, occlusion, dictionary, contract)
