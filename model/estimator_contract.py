"""The occlusion estimator's contract, torch-free: tensor names, per-cell thresholds, probabilities -> cells.

The estimator (``pdsn.model.occlusion_net``) maps an aligned crop to the probability that each of the
25 grid cells is occluded; a cell counts as occluded when its probability reaches that cell's
threshold, chosen on validation data at training time. The exported ``estimator.onnx`` takes the
recognition model's ``image`` input (uint8 [N, 112, 96, 3] RGB, normalised inside the graph) and
returns ``occlusion_probability`` float32 [N, 25] (sigmoid inside the graph), so a runtime can turn
its output into the recognition model's ``occlusion`` input with :func:`cells_from_probabilities`.
"""

from __future__ import annotations

import numpy as np

from pdsn.model.grid import NUM_CELLS
from pdsn.model.validation import as_real_array

ESTIMATOR_FILE = "estimator.onnx"
ESTIMATOR_IMAGE_INPUT = "image"
ESTIMATOR_OUTPUT = "occlusion_probability"
ESTIMATOR_FORMAT = "pdsn-occlusion-estimator"
ESTIMATOR_FORMAT_VERSION = 1


def check_thresholds(thresholds: object, argument: str = "thresholds") -> np.ndarray:
    """25 per-cell thresholds, each strictly inside (0, 1), as float32 (25,); otherwise an error saying which."""
    array = as_real_array(thresholds, argument, "25 per-cell probability thresholds in (0, 1)")
    if array.shape != (NUM_CELLS,):
        raise ValueError(
            f"{argument} must hold one threshold per grid cell, shape ({NUM_CELLS},), got shape {array.shape}"
        )
    bad = ~((array > 0.0) & (array < 1.0))
    if bad.any():
        cell = int(np.argmax(bad))
        raise ValueError(
            f"{argument}[{cell}] is {array[cell].item()!r}; every threshold must be strictly between 0 and 1 "
            f"(0 would flag every cell, 1 none), found {int(bad.sum())} outside. Re-select the thresholds on "
            "validation data (`pdsn train-occlusion`) instead of editing them"
        )
    return array.astype(np.float32)


def cells_from_probabilities(probabilities: object, thresholds: object) -> np.ndarray:
    """float32 (N, 25) occlusion vectors: 1 where a cell's probability reaches its threshold."""
    limits = check_thresholds(thresholds)
    array = as_real_array(probabilities, "probabilities", "an (N, 25) array of cell probabilities")
    if array.ndim != 2 or array.shape[1] != NUM_CELLS:
        raise ValueError(f"probabilities must have shape (N, {NUM_CELLS}) (one row per face), got shape {array.shape}")
    return (array >= limits).astype(np.float32)
