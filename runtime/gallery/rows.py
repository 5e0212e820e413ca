"""A growable 2-D array: appends amortised by doubling, deletes by mask; rows stay in order."""

from __future__ import annotations

import numpy as np


class Rows:
    """``array`` is a view of the first ``len(self)`` rows of a buffer that grows by doubling."""

    def __init__(self, width: int, dtype: np.dtype | type) -> None:
        self._buffer = np.empty((0, width), dtype=dtype)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self._count]

    @property
    def nbytes(self) -> int:
        return self._count * self._buffer.shape[1] * self._buffer.itemsize

    def reserve(self, count: int) -> None:
        """Room for ``count`` rows in all, allocated once: a gallery that knows how many faces it loads
        never holds a buffer and its doubled copy at the same time."""
        if count > len(self._buffer):
            grown = np.empty((count, self._buffer.shape[1]), self._buffer.dtype)
            grown[: self._count] = self.array
            self._buffer = grown

    def append(self, rows: np.ndarray) -> None:
        needed = self._count + len(rows)
        if needed > len(self._buffer):
            grown = np.empty((max(needed, 2 * len(self._buffer), 16), self._buffer.shape[1]), self._buffer.dtype)
            grown[: self._count] = self.array
            self._buffer = grown
        self._buffer[self._count : needed] = rows
        self._count = needed

    def extend(self, rows: list[np.ndarray]) -> None:
        """Append one row per array, each copied straight into the buffer (no stacked copy of them all first)."""
        needed = self._count + len(rows)
        if needed > len(self._buffer):
            self.reserve(max(needed, 2 * len(self._buffer), 16))
        for index, row in enumerate(rows, start=self._count):
            self._buffer[index] = row
        self._count = needed

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` is True, in order."""
        kept = self.array[mask]
        self._buffer = np.ascontiguousarray(kept)
        self._count = len(kept)
