"""An approximate first stage for large galleries: an HNSW graph (usearch) over one pattern's embeddings.

Exact search reads every face's embedding under the probe's pattern (one matrix-vector product;
12 ms at 100,000 faces on a 2-core CPU). An HNSW index over the same embeddings finds a probe's
candidates in about 1.6 ms there, but building it takes most of a minute per pattern at that size,
and the embeddings differ for every pattern, so only the warm patterns (searched most, known in
advance) get one, built by ``Gallery.warm``. The candidates are then scored exactly, so every score
returned is the exact one; only a face the graph misses can be lost (measured: 97% of a probe's
mates found among its top 10 at ``EXPANSION_SEARCH``; ``bench/ann_choice.py``).

An index covers a prefix of its group's rows (rows are only ever appended, and removals keep the
order); its keys are face ids, so rows appended later extend it and a removal deletes its faces'
keys, and the index stays in use either way.
"""

from __future__ import annotations

import numpy as np

from pdsn.runtime.gallery.records import GalleryError

CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 256
_INSTALL_HINT = 'pip install "pdsn-deploy[ann]"'


def _usearch():
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise GalleryError(f"ann_min_faces needs usearch for its HNSW indexes: {_INSTALL_HINT}") from exc
    return Index


class PatternIndex:
    """HNSW (inner product, int8 vectors) over the first ``count`` rows of a group's normalised embeddings
    under one pattern, keyed by face id."""

    def __init__(self, embeddings: np.ndarray, face_ids: list[int], threads: int = 0) -> None:
        index_type = _usearch()
        self._index = index_type(
            ndim=embeddings.shape[1],
            metric="ip",
            dtype="i8",
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        self._threads = threads
        self._row_of: dict[int, int] = {}
        self.count = 0
        self.extend(embeddings, face_ids)

    def extend(self, embeddings: np.ndarray, face_ids: list[int]) -> None:
        """Index rows ``count..len(embeddings)`` (those appended since the last call); ``face_ids`` row-aligned."""
        new = embeddings[self.count :]
        if len(new):
            added = face_ids[self.count : len(embeddings)]
            self._index.add(
                np.asarray(added, dtype=np.uint64), np.ascontiguousarray(new, dtype=np.float32), threads=self._threads
            )
            self._row_of.update((face, row) for row, face in enumerate(added, self.count))
            self.count = len(embeddings)

    def keep(self, keep: np.ndarray, face_ids: list[int]) -> None:
        """The group's rows where ``keep`` is False are removed (``face_ids``: the rows before the removal)."""
        indexed = list(zip(face_ids[: self.count], keep[: self.count]))
        gone = [face for face, kept in indexed if not kept]
        if gone:
            self._index.remove(np.asarray(gone, dtype=np.uint64))
        kept_faces = [face for face, kept in indexed if kept]
        self._row_of = {face: row for row, face in enumerate(kept_faces)}
        self.count = len(kept_faces)

    def candidates(self, probes: np.ndarray, count: int) -> list[np.ndarray]:
        """Per probe (normalised, (M, E)), the rows of up to ``count`` nearest faces."""
        found = self._index.search(np.ascontiguousarray(probes, dtype=np.float32), min(count, self.count))
        if len(probes) == 1:  # one query: a Matches, not a BatchMatches
            keys = [found.keys]
        else:
            keys = [found.keys[i, : found.counts[i]] for i in range(len(probes))]
        return [np.array([self._row_of[int(key)] for key in row], dtype=np.int64) for row in keys]

    @property
    def nbytes(self) -> int:
        return int(self._index.memory_usage)
