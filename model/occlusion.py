"""``Occlusion``: which cells of the 5x5 grid a face has covered, the one value every layer passes on.

A caller's occlusion arrives as cell ids, as 0/1 vectors of 25 or as the estimator's output; it is
checked once, where it enters, into ``Occlusion`` values. Past that point the runtime, the gallery
and the service trust them: ``bits`` is the 25-bit mask the gallery keys its patterns by (bit j =
cell j occluded), ``cells`` the sorted ids answers carry, ``vector`` the float row a model takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pdsn.errors import InputError
from pdsn.model.grid import NUM_CELLS, validate_cell_ids, validate_occlusion_vectors

ALL_BITS = (1 << NUM_CELLS) - 1
_BIT_VALUES = 1 << np.arange(NUM_CELLS, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Occlusion:
    """The occluded cells of one face as a 25-bit mask; make it with ``from_cells``, ``from_vector`` or
    ``from_bits``, which check what they are given."""

    bits: int = 0

    @classmethod
    def from_cells(cls, cells: Iterable[int], argument: str = "cells") -> Occlusion:
        """From distinct cell ids 0..24; an ``InputError`` naming ``argument`` otherwise."""
        return cls(sum(1 << cell for cell in validate_cell_ids(cells, argument)))

    @classmethod
    def from_vector(cls, vector: object, argument: str = "occlusion") -> Occlusion:
        """From one 0/1 vector of 25 entries (1 = occluded)."""
        vectors = validate_occlusion_vectors(vector, argument)
        if len(vectors) != 1:
            raise InputError(argument, f"{argument}: expected one vector of 25 entries, got {len(vectors)} rows")
        return from_checked_vectors(vectors)[0]

    @classmethod
    def from_bits(cls, bits: object, argument: str = "occlusion") -> Occlusion:
        """From a 25-bit mask, as a store keeps it."""
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= ALL_BITS:
            raise InputError(argument, f"{argument}: expected a 25-bit cell mask in 0..{ALL_BITS}, got {bits!r}")
        return cls(int(bits))

    @property
    def cells(self) -> tuple[int, ...]:
        """The occluded cell ids, ascending."""
        return tuple(cell for cell in range(NUM_CELLS) if self.bits >> cell & 1)

    @property
    def vector(self) -> np.ndarray:
        """Float32 (25,), 1.0 where occluded."""
        return ((self.bits & _BIT_VALUES) != 0).astype(np.float32)

    @property
    def occluded(self) -> bool:
        return self.bits != 0

    def __or__(self, other: Occlusion) -> Occlusion:
        """The union: a cell occluded in either face (the PDSN protocol masks both faces by it)."""
        return Occlusion(self.bits | other.bits)

    def covers(self, other: Occlusion) -> bool:
        """Whether every cell occluded in ``other`` is occluded here too."""
        return other.bits & ~self.bits == 0

    def __repr__(self) -> str:
        return f"Occlusion(cells={list(self.cells)})"


NO_OCCLUSION = Occlusion()


def from_checked_vectors(vectors: np.ndarray) -> tuple[Occlusion, ...]:
    """Rows of (N, 25) 0/1 vectors already checked (``validate_occlusion_vectors``, or a model's own output)."""
    return tuple(Occlusion(int(bits)) for bits in (np.asarray(vectors) != 0) @ _BIT_VALUES)


def as_vectors(occlusions: Sequence[Occlusion]) -> np.ndarray:
    """Float32 (N, 25) rows of ``occlusions``, the form a model takes its occlusion in."""
    bits = np.fromiter((o.bits for o in occlusions), dtype=np.int64, count=len(occlusions))
    return ((bits[:, None] & _BIT_VALUES) != 0).astype(np.float32)
