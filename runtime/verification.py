"""Two faces compared the PDSN way: both masked by the union of their occluded cells, then the cosine.

``Recognizer.submit_verification`` pairs the faces and scores them here; ``Recognizer.verify`` and the service's
``/v1/verify`` both go through it, so the rule lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdsn.errors import InputError
from pdsn.model.occlusion import Occlusion
from pdsn.runtime.face_finder import Located


@dataclass(frozen=True)
class PairScore:
    """The cosine of two faces, and the cells that masked both."""

    score: float
    occlusion: Occlusion


def pair_faces(face_a: Located, face_b: Located) -> Located:
    """One located face per side, as one batch of two."""
    for side, name in ((face_a, "image_a"), (face_b, "image_b")):
        if len(side) != 1:
            raise InputError(name, f"{name}: expected one face, got a batch of {len(side)}")
    return Located(np.concatenate([face_a.batch, face_b.batch]), None, 2)


def pair_score(first: np.ndarray, second: np.ndarray) -> float:
    """The cosine of two embeddings (0 for a zero embedding)."""
    return float(np.dot(first, second) / max(np.linalg.norm(first) * np.linalg.norm(second), 1e-12))
