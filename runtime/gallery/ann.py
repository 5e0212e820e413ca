"""An approximate first stage for large galleries: an HNSW graph (usearch) over one pattern's embeddings.

Exact search reads every face's embedding under the probe's pattern (one matrix-vector product; 12
ms at 100,000 faces on a 2-core CPU). An HNSW index over the same embeddings finds a probe's
candidates in about 2.5 ms there, but building it takes about a minute per pattern at that size,
and the embeddings differ for every pattern, so only the warm patterns (searched most, known in
advance) get one, built by ``Gallery.warm``. The candidates are then scored exactly, so every score
returned is the exact one; only a face the graph misses can be lost (measured: 98% of a probe's
mates found among its top 10 at ``EXPANSION_SEARCH``; ``bench/ann_choice.py``).

Keys are row positions in the group, so rows appended later extend the index; a removal makes the
group's indexes stale, and they are dropped (exact search until the next ``warm``).
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
    """HNSW (inner product, int8 vectors) over the first ``count`` rows of a pattern's normalised embeddings."""

    def __init__(self, embeddings: np.ndarray, threads: int = 0) -> None:
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
        self.count = 0
        self.extend(embeddings)

    def extend(self, embeddings: np.ndarray) -> None:
        """Index rows ``count..len(embeddings)`` (those appended since the last call)."""
        new = embeddings[self.count :]
        if len(new):
            keys = np.arange(self.count, len(embeddings), dtype=np.uint64)
            self._index.add(keys, np.ascontiguousarray(new, dtype=np.float32), threads=self._threads)
            self.count = len(embeddings)

    def candidates(self, probes: np.ndarray, count: int) -> list[np.ndarray]:
        """Per probe (normalised, (M, E)), the rows of up to ``count`` nearest faces."""
        found = self._index.search(np.ascontiguousarray(probes, dtype=np.float32), min(count, self.count))
        if len(probes) == 1:  # one query: a Matches, not a BatchMatches
            return [np.asarray(found.keys, dtype=np.int64)]
        return [found.keys[i, : found.counts[i]].astype(np.int64) for i in range(len(probes))]

    @property
    def nbytes(self) -> int:
        return int(self._index.memory_usage)
