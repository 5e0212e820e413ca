"""What a gallery stores per face, and what a gallery is bound to (its model's fingerprint)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

GALLERY_FORMAT = "pdsn-gallery"
GALLERY_FORMAT_VERSION = 1


class GalleryError(RuntimeError):
    """The gallery cannot be opened or used as asked; the message says why and what to do."""


class UnknownIdentityError(GalleryError, KeyError):
    """No identity of that name is enrolled."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateIdentityError(GalleryError):
    """The identity is already enrolled (pass replace=True to replace it)."""


@dataclass(frozen=True)
class Fingerprint:
    """What the stored features and embeddings depend on: a gallery opened with anything else is refused."""

    model_sha256: str  # the FP32 model file: the trunk's weights and the head
    dictionary_sha256: str
    precision: str  # the trunk variant whose features are stored
    feature_size: int
    embedding_size: int

    def to_dict(self) -> dict:
        return {
            "model_sha256": self.model_sha256,
            "dictionary_sha256": self.dictionary_sha256,
            "precision": self.precision,
            "feature_size": self.feature_size,
            "embedding_size": self.embedding_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        try:
            return cls(
                str(data["model_sha256"]),
                str(data["dictionary_sha256"]),
                str(data["precision"]),
                int(data["feature_size"]),
                int(data["embedding_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"the gallery's model fingerprint is incomplete or malformed: {exc!r}") from None

    def mismatch(self, other: Fingerprint) -> list[str]:
        """What differs, in words, or [] when the two are the same."""
        names = {
            "model_sha256": "model (FP32 file SHA-256)",
            "dictionary_sha256": "mask dictionary (SHA-256)",
            "precision": "trunk precision",
            "feature_size": "feature size",
            "embedding_size": "embedding size",
        }
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{names[key]}: gallery {mine[key]}, recognizer {theirs[key]}" for key in names if mine[key] != theirs[key]
        ]


@dataclass
class FaceRecord:
    """One enrolled face.

    ``cells``: the face's own occluded cells as a 25-bit mask. ``features``: the trunk's flat
    features (float16 or float32), None when the gallery keeps only pattern embeddings.
    ``base``: the unmasked embedding (float32, not normalised). ``patterns``: normalised embeddings
    per pattern mask, stored when the gallery keeps no features.
    """

    face_id: int
    identity: str
    cells: int
    base: np.ndarray
    features: np.ndarray | None = None
    patterns: dict[int, np.ndarray] = field(default_factory=dict)


def checksum(*arrays: np.ndarray | None) -> int:
    """CRC-32 over the arrays' bytes, to catch a damaged file's blobs at load."""
    value = 0
    for array in arrays:
        if array is not None:
            value = zlib.crc32(np.ascontiguousarray(array).data, value)
    return value
