"""Numpy reference of the fused FDM op: the definition every other implementation is tested against.

``out[n] = features[n] * prod_{j : occlusion[n, j] = 1} dictionary[j]``
"""

from __future__ import annotations

import numpy as np


def fdm_gather_mul(features: np.ndarray, occlusion: np.ndarray, dictionary: np.ndarray) -> np.ndarray:
    """Multiply each feature map by the AND (product) of the dictionary items of its occluded cells.

    features: (N, C, H, W); occlusion: (N, K) of 0/1; dictionary: (K, C, H, W).
    """
    features = np.asarray(features)
    occlusion = np.asarray(occlusion)
    dictionary = np.asarray(dictionary)
    if features.ndim != 4 or dictionary.ndim != 4 or features.shape[1:] != dictionary.shape[1:]:
        raise ValueError(
            f"fdm_gather_mul: features {features.shape} and dictionary {dictionary.shape} must be "
            f"(N, C, H, W) and (K, C, H, W) with the same C, H, W"
        )
    if occlusion.shape != (features.shape[0], dictionary.shape[0]):
        raise ValueError(
            f"fdm_gather_mul: occlusion has shape {occlusion.shape}, expected "
            f"({features.shape[0]}, {dictionary.shape[0]})"
        )
    keep = np.ones(features.shape, dtype=features.dtype)
    for cell in range(dictionary.shape[0]):
        occluded = occlusion[:, cell] != 0
        if occluded.any():
            keep[occluded] *= dictionary[cell].astype(features.dtype)
    return features * keep
