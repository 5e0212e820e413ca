"""What a gallery stores per face, and what a gallery is bound to (its model's fingerprint)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pdsn.errors import PdsnError

GALLERY_FORMAT = "pdsn-gallery"
GALLERY_FORMAT_VERSION = 1


class GalleryError(PdsnError, RuntimeError):
    """The gallery cannot be opened or used as asked; the message says why and what to do."""


class NoGalleryError(GalleryError):
    """The location holds no gallery yet, and creating one was not asked for."""


class UnknownIdentityError(GalleryError, KeyError):
    """No identity of that name is enrolled."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DamagedFaceError(GalleryError):
    """A stored face whose arrays do not match their checksum."""

    def __init__(self, message: str, face: DamagedFace) -> None:
        super().__init__(message)
        self.face = face


@dataclass(frozen=True)
class DamagedFace:
    """A face left out of a gallery because its stored arrays are damaged; ``pdsn gallery check --repair`` removes it."""

    face_id: int
    identity: str
    reason: str


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


class GalleryStore(Protocol):
    """The system of record a Gallery reads and writes (SQLite file or PostgreSQL database)."""

    @property
    def location(self) -> str:
        """For messages: a file path, or a database URL without its password."""
        ...

    @property
    def pattern_dtype(self) -> str:
        """The precision a read-back pattern embedding keeps."""
        ...

    def read_meta(self) -> dict[str, str]: ...
    def write_meta(self, values: dict[str, str]) -> None: ...
    def add_identities(
        self, people: Sequence[tuple[str, dict, Sequence[FaceRecord]]], replace: bool
    ) -> list[list[int]]: ...
    def remove_identity(self, name: str) -> None: ...
    def metadata(self, name: str) -> dict: ...
    def identities(self, offset: int = 0, limit: int | None = None) -> list[str]: ...
    def count(self) -> int: ...
    def contains(self, name: str) -> bool: ...
    def face_ids(self) -> set[int]: ...
    def group_sizes(self) -> dict[int, int]: ...
    def faces(
        self, ids: Sequence[int] | None = None, embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]: ...

    def faces_of(
        self, names: Sequence[str], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]: ...

    def remove_faces(self, face_ids: Sequence[int]) -> list[str]: ...
    def changed(self) -> bool: ...
    def close(self) -> None: ...


# Faces read from a store per query while a gallery loads: the rows in flight stay small beside the arrays.
LOAD_CHUNK = 256


def checksum(*arrays: np.ndarray | None) -> int:
    """CRC-32 over the arrays' bytes, to catch a damaged file's blobs at load."""
    value = 0
    for array in arrays:
        if array is not None:
            value = zlib.crc32(np.ascontiguousarray(array).data, value)
    return value


def encode_face(face: FaceRecord) -> tuple:
    """A face as a store's row: cells, base, features, feature dtype, pattern ids (JSON), pattern blob, CRC-32."""
    patterns = sorted(face.patterns)
    stacked = np.stack([face.patterns[p] for p in patterns]).astype(np.float32) if patterns else None
    base = face.base.astype(np.float32)
    features = face.features
    return (
        face.cells,
        base.tobytes(),
        None if features is None else features.tobytes(),
        None if features is None else features.dtype.name,
        json.dumps(patterns),
        None if stacked is None else stacked.tobytes(),
        checksum(base, features, stacked),
    )


def decode_face(
    where, face_id, name, cells, base, features, dtype, patterns, blob, crc, *, embedding_size: int
) -> FaceRecord:
    """The face of a store's row, its CRC-32 checked (a damaged row is refused naming ``where``)."""
    base_array = np.frombuffer(base, dtype=np.float32)
    feature_array = None if features is None else np.frombuffer(features, dtype=np.dtype(dtype))
    pattern_ids = json.loads(patterns)
    stacked = None if blob is None else np.frombuffer(blob, dtype=np.float32).reshape(len(pattern_ids), -1)
    if checksum(base_array, feature_array, stacked) != crc or (embedding_size and len(base_array) != embedding_size):
        raise DamagedFaceError(
            f"gallery {where}: face {face_id} of identity {name!r} is damaged (checksum mismatch); remove it with "
            f"`pdsn gallery check --repair` and re-enroll {name!r}, or restore the gallery from a backup",
            DamagedFace(int(face_id), str(name), "checksum mismatch"),
        )
    return FaceRecord(
        face_id,
        name,
        int(cells),
        base_array,
        feature_array,
        {} if stacked is None else {int(p): stacked[i] for i, p in enumerate(pattern_ids)},
    )


def decoded_rows(where, rows, embedding_size: int, damaged: list[DamagedFace] | None) -> Iterator[FaceRecord]:
    """The faces of a store's rows; a damaged one is refused, or with ``damaged`` noted there and left out."""
    for row in rows:
        try:
            yield decode_face(where, *row, embedding_size=embedding_size)
        except DamagedFaceError as exc:
            if damaged is None:
                raise
            damaged.append(exc.face)


def meta_values(fingerprint: dict, settings: dict) -> dict[str, str]:
    """The meta table's rows for a new gallery."""
    return {
        "format": GALLERY_FORMAT,
        "format_version": str(GALLERY_FORMAT_VERSION),
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "settings": json.dumps(settings, sort_keys=True),
    }
