"""Judging an exported occlusion estimator against PyTorch's probabilities, torch-free.

The export records PyTorch's probabilities of the seeded parity faces in the bundle's parity
report, so ``pdsn verify`` can judge the estimator on every backend it runs on, as the export
judged ONNX Runtime, without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, GRID_COLS, GRID_ROWS, cell_bounds
from pdsn.model.sample_faces import seeded_faces

PARITY_FACES = 16


@dataclass(frozen=True)
class EstimatorGate:
    """FP32 must match PyTorch to float rounding: probabilities, and cells away from the thresholds."""

    max_abs_error: float = 1e-4


def parity_faces(
    count: int = PARITY_FACES, seed: int = 0, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)
) -> np.ndarray:
    """Seeded face-like crops of ``size``, every second one with a solid box over a random 2x2 block of cells.

    Occluded faces put probabilities across the whole range, so the cell check sees decisions both ways.
    """
    faces = seeded_faces(count, seed, size)
    rng = np.random.default_rng([seed, 1])
    for face in faces[1::2]:
        row, col = (int(i) for i in rng.integers(0, GRID_ROWS - 1, size=2))
        x0, y0, _, _ = cell_bounds(row * GRID_COLS + col, size)
        _, _, x1, y1 = cell_bounds((row + 1) * GRID_COLS + col + 1, size)
        face[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    return faces


def judge_estimator(
    reference: np.ndarray, got: np.ndarray, thresholds: np.ndarray, compared: str, gate: EstimatorGate = EstimatorGate()
) -> dict:
    """Probability error and cell agreement of ``got`` against PyTorch's ``reference``, judged by ``gate``."""
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    if got.shape != reference.shape:
        raise ValueError(
            f"{compared}: the estimator returned probabilities of shape {got.shape}, expected {reference.shape}; "
            "it is not an occlusion estimator of this contract"
        )
    error = np.abs(got - reference)
    disagree = (got >= thresholds) != (reference >= thresholds)
    near = np.abs(reference - thresholds) <= gate.max_abs_error
    failures = []
    if not error.max() <= gate.max_abs_error:
        failures.append(f"max |probability error| {error.max():.2e} > {gate.max_abs_error:.0e}")
    if (disagree & ~near).any():
        failures.append(
            f"{int((disagree & ~near).sum())} cell decision(s) differ away from the threshold "
            f"(of {disagree.size}; {int(disagree.sum())} differ in all)"
        )
    return {
        "compared": compared,
        "faces": len(reference),
        "gate": asdict(gate),
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "cell_agreement": float(1.0 - disagree.mean()),
        "cells_differing": int(disagree.sum()),
        "cells_near_threshold": int(near.sum()),
        "cells_flagged_by_pytorch": int((reference >= thresholds).sum()),
        "passed": not failures,
        "failures": failures,
    }
