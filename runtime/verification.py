"""Two faces compared the PDSN way: both masked by the union of their occluded cells, then the cosine.

``Recognizer.verify`` and the service's ``/v1/verify`` both build the pair here, so the rule lives in
one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VerificationPair:
    faces: np.ndarray  # the two faces as one batch of two
    occlusion: np.ndarray  # the union of their cells, once per face: (2, 25)
    union: np.ndarray  # (1, 25)


def union_pair(face_a: np.ndarray, face_b: np.ndarray, cells_a: np.ndarray, cells_b: np.ndarray) -> VerificationPair:
    """One prepared face (a batch of one) and its (1, 25) occlusion per side."""
    union = np.maximum(cells_a, cells_b)
    return VerificationPair(np.concatenate([face_a, face_b]), np.repeat(union, 2, axis=0), union)


def pair_score(first: np.ndarray, second: np.ndarray) -> float:
    """The cosine of two embeddings (0 for a zero embedding)."""
    return float(np.dot(first, second) / max(np.linalg.norm(first) * np.linalg.norm(second), 1e-12))
