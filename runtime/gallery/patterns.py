"""Occlusion patterns as 25-bit masks, and the per-pattern cache of a gallery's embeddings.

Under the PDSN protocol a probe and a gallery face are both masked by the union of their occluded
cells, so the gallery's embeddings depend on the probe's pattern. The cache keeps, per group of
faces enrolled with the same cells and per union pattern, the group's normalised embeddings: the
first probe with a pattern pays one matrix product over the stored features, later ones a dot
product per face. Entries are evicted least recently used beyond a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pdsn.errors import PdsnError
from pdsn.model.grid import SCARF_CELLS, SUNGLASSES_CELLS
from pdsn.model.occlusion import Occlusion
from pdsn.runtime.gallery.rows import Rows

# Computed for every face at enrollment: none, sunglasses (cells 10-13), lower face (cells 20-24).
DEFAULT_WARM_PATTERNS: tuple[tuple[int, ...], ...] = ((), tuple(SUNGLASSES_CELLS), tuple(SCARF_CELLS))
DEFAULT_CACHE_BYTES = 1 << 30


def warm_pattern_masks(patterns: Sequence[Iterable[int]], field: str = "warm_patterns") -> tuple[int, ...]:
    """The warm list as masks, checked: each entry a collection of cell ids 0..24 (a bad one named as
    ``field[index]``)."""
    masks = [
        Occlusion.from_cells(set(cells) if isinstance(cells, (list, tuple)) else cells, f"{field}[{index}]").bits
        for index, cells in enumerate(patterns)
    ]
    return tuple(dict.fromkeys(masks))


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    compute_seconds: float
    bytes: int
    entries: int
    budget_bytes: int


class PatternBusyError(PdsnError, RuntimeError):
    """A gallery has as many new occlusion patterns to compute as it takes at once; retry shortly."""


class PatternCache:
    """Normalised embeddings per (group, union pattern) as growable ``Rows``, least recently used out
    beyond ``budget_bytes``. An entry may cover fewer rows than its group has (faces enrolled since);
    the gallery completes it when it is next used."""

    def __init__(self, budget_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"cache_bytes must be a whole number of bytes >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, int], Rows] = OrderedDict()
        self._sizes: dict[tuple[int, int], int] = {}
        self._bytes = 0
        self._hits = self._misses = 0
        self._compute = 0.0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int], count: bool = True) -> Rows | None:
        """The entry, most recently used now; ``count`` it as a hit or miss (a probe's lookup)."""
        with self._lock:
            entry = self._entries.get(key)
            if count:
                self._hits += entry is not None
                self._misses += entry is None
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[int, int], rows: Rows, seconds: float) -> None:
        with self._lock:
            self._drop(key)
            self._entries[key] = rows
            self._sizes[key] = 0
            self._account(key, seconds)

    def resized(self, key: tuple[int, int], seconds: float) -> None:
        """An entry grew or shrank in place (``seconds``: the time spent computing its new rows)."""
        with self._lock:
            if key in self._entries:
                self._account(key, seconds)

    def keys_of_group(self, group: int) -> list[tuple[int, int]]:
        with self._lock:
            return [key for key in self._entries if key[0] == group]

    def drop_group(self, group: int) -> None:
        with self._lock:
            for key in [key for key in self._entries if key[0] == group]:
                self._drop(key)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._compute, self._bytes, len(self._entries), self.budget_bytes
            )

    def _account(self, key: tuple[int, int], seconds: float) -> None:
        self._compute += seconds
        size = self._entries[key].nbytes
        self._bytes += size - self._sizes[key]
        self._sizes[key] = size
        while self._bytes > self.budget_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, int]) -> None:
        if self._entries.pop(key, None) is not None:
            self._bytes -= self._sizes.pop(key)
