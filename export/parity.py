"""ONNX vs PyTorch parity on the same faces and occlusion patterns, with a pass/fail gate.

The torch-free half of every comparison (metrics, patterns, running an ONNX file) is
:mod:`pdsn.model.comparison`; this module adds the PyTorch reference.
"""

from __future__ import annotations

import numpy as np
import torch

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import ModelContract
from pdsn.model.comparison import (
    PARITY_PATTERNS,
    ExportGate,
    judge_against_reference,
    occlusion_batch,
    onnx_session,
    run_onnx,
)
from pdsn.model.dictionary import MaskDictionary
from pdsn.model.recognition import RecognitionNetwork


class ParityError(PdsnError, RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def pytorch_embeddings(
    model: RecognitionNetwork, faces: np.ndarray, occlusion: np.ndarray, dictionary: MaskDictionary
) -> np.ndarray:
    """The reference computation: normalise, trunk, multiply by the AND of the items, head."""
    mask = torch.from_numpy(dictionary.combine(occlusion).astype(np.float32))
    with torch.no_grad():
        return model.eval()(model.normalise(faces), mask).numpy()


def reference_embeddings(
    model: RecognitionNetwork, faces: np.ndarray, dictionary: MaskDictionary, contract: ModelContract
) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
    """PyTorch's embeddings of ``faces`` under every pattern in PARITY_PATTERNS, as the contract's output."""
    references = {}
    for name, cells in PARITY_PATTERNS.items():
        embeddings = pytorch_embeddings(model, faces, occlusion_batch(cells, len(faces)), dictionary)
        if contract.l2_normalized:
            embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        references[name] = (cells, embeddings)
    return references


def export_parity(
    onnx_path: str,
    references: dict[str, tuple[tuple[int, ...], np.ndarray]],
    faces: np.ndarray,
    dictionary: MaskDictionary,
    contract: ModelContract,
    gate: ExportGate,
) -> dict:
    """The exported file on ONNX Runtime against PyTorch's embeddings, on every pattern; report and judge."""
    session = onnx_session(onnx_path)
    return judge_against_reference(
        references,
        lambda batch, occlusion: run_onnx(session, batch, occlusion, dictionary.masks, contract),
        faces,
        gate,
        "onnxruntime CPU (model.onnx) vs PyTorch eager FP32",
    )


def format_parity_table(report: dict) -> str:
    rows = [f"{'pattern':<12} {'cos min':>10} {'cos mean':>10} {'max |err|':>10} {'max |ref|':>10}  result"]
    for name, m in report["patterns"].items():
        rows.append(
            f"{name:<12} {m['cosine_min']:>10.7f} {m['cosine_mean']:>10.7f} "
            f"{m['max_abs_error']:>10.2e} {m['reference_max_abs']:>10.3f}  "
            f"{'pass' if m['passed'] else 'FAIL'}"
        )
    return "\n".join(rows)
