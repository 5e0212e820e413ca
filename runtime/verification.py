"""Two faces compared the PDSN way: both masked by the union of their occluded cells, then the cosine.

``Recognizer.submit_verification`` builds the pair here; ``Recognizer.verify`` and the service's
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


@dataclass(frozen=True)
class VerificationPair:
    faces: Located  # the two faces as one batch of two
    union: Occlusion

    @property
    def occlusion(self) -> tuple[Occlusion, Occlusion]:
        return (self.union, self.union)

    def scored(self, embeddings: np.ndarray) -> PairScore:
        """The pair's score from the (2, E) embeddings of ``faces``."""
        return PairScore(pair_score(embeddings[0], embeddings[1]), self.union)


def union_pair(face_a: Located, face_b: Located, occlusion_a: Occlusion, occlusion_b: Occlusion) -> VerificationPair:
    """One located face per side, and each side's occlusion."""
    for side, name in ((face_a, "image_a"), (face_b, "image_b")):
        if len(side) != 1:
            raise InputError(name, f"{name}: expected one face, got a batch of {len(side)}")
    return VerificationPair(Located(np.concatenate([face_a.batch, face_b.batch]), None, 2), occlusion_a | occlusion_b)


def pair_score(first: np.ndarray, second: np.ndarray) -> float:
    """The cosine of two embeddings (0 for a zero embedding)."""
    return float(np.dot(first, second) / max(np.linalg.norm(first) * np.linalg.norm(second), 1e-12))
