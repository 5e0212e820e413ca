"""The recognition head after the mask, folded into one linear map (numpy only).

The head is BN1d -> Dropout -> Linear -> BN1d; in eval mode it folds into ``e = W' f + b'``. Since
the FDM only zeroes feature elements, the embedding of features ``f`` under a mask ``m`` is
``W' (f ⊙ m) + b'``: the trunk runs once per face, and the embeddings of many faces under any
occlusion pattern are one matrix product over the kept columns of ``W'``, or equivalently the
unmasked embedding minus the product over the discarded columns, whichever has fewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_FORMAT = "pdsn-folded-head"
BLOCK_ROWS = 2048  # faces per product in HeadSlice.apply


@dataclass(frozen=True)
class FoldedHead:
    """``weight`` float32 (E, F) and ``bias`` float32 (E,): embedding = weight @ features + bias."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(
                f"folded head: weight must be (E, F) and bias (E,), got {self.weight.shape} and {self.bias.shape}"
            )

    @property
    def embedding_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_size(self) -> int:
        return int(self.weight.shape[1])

    def embed(self, features: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Embeddings (N, E) of flat features (N, F) under one keep mask (F,) of 0/1 (None: keep all)."""
        features = self._flat(features)
        if keep is None:
            return features @ self.weight.T + self.bias
        return self.masked(features, np.flatnonzero(keep == 0), base=None)

    def masked(self, features: np.ndarray, discarded: np.ndarray, base: np.ndarray | None) -> np.ndarray:
        """Embeddings of ``features`` with the ``discarded`` feature columns zeroed (see ``HeadSlice``)."""
        return self.slice(discarded).apply(self._flat(features), base, self)

    def slice(self, discarded: np.ndarray) -> HeadSlice:
        """The columns to compute over for a mask discarding ``discarded``: the kept or the discarded
        ones, whichever are fewer, with their weights gathered once (reuse it for many products)."""
        discarded = np.asarray(discarded, dtype=np.int64)
        if len(discarded) * 2 <= self.feature_size:
            columns, subtract = discarded, True
        else:
            columns, subtract = np.setdiff1d(np.arange(self.feature_size), discarded, assume_unique=True), False
        return HeadSlice(columns, np.ascontiguousarray(self.weight[:, columns].T), subtract)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, format=np.array(HEAD_FORMAT), weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path: str | Path) -> FoldedHead:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != HEAD_FORMAT:
                raise ValueError(f"{path} is not a {HEAD_FORMAT} file (written by `pdsn export`)")
            weight, bias = data["weight"], data["bias"]
        if weight.dtype != np.float32 or bias.dtype != np.float32:
            raise ValueError(f"{path}: the folded head must be float32, got {weight.dtype} and {bias.dtype}")
        return cls(weight, bias)

    def _flat(self, features: np.ndarray) -> np.ndarray:
        flat = features.reshape(len(features), -1)
        if flat.shape[1] != self.feature_size:
            raise ValueError(
                f"features: {flat.shape[1]} values per face, but the head takes {self.feature_size} "
                f"(the trunk's C x H x W); were they computed by another model?"
            )
        return flat


@dataclass(frozen=True)
class HeadSlice:
    """The head's weights over some feature columns, transposed (columns, E), gathered once.

    ``subtract``: the columns are the discarded ones, so an embedding is the unmasked one minus
    their product; otherwise they are the kept ones, and it is their product plus the bias.
    """

    columns: np.ndarray
    weight_t: np.ndarray
    subtract: bool

    @property
    def nbytes(self) -> int:
        return self.weight_t.nbytes + self.columns.nbytes

    def apply(self, features: np.ndarray, base: np.ndarray | None, head: FoldedHead) -> np.ndarray:
        """Embeddings (N, E) of flat ``features`` (N, F); ``base``: their unmasked embeddings, if known.

        Rows go in blocks, so the gathered float32 columns stay small whatever N is.
        """
        if not len(self.columns) and not self.subtract:  # every column discarded: the bias alone
            return np.broadcast_to(head.bias, (len(features), head.embedding_size)).copy()
        if not len(self.columns):
            return head.embed(features) if base is None else base
        out = np.empty((len(features), head.embedding_size), dtype=np.float32)
        for start in range(0, len(features), BLOCK_ROWS):
            rows = slice(start, start + BLOCK_ROWS)
            product = _columns(features[rows], self.columns) @ self.weight_t
            if not self.subtract:
                out[rows] = product + head.bias
            else:
                out[rows] = (head.embed(features[rows]) if base is None else base[rows]) - product
        return out


def _columns(features: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``features[:, columns]`` as float32 (stored features may be float16); ``np.take`` then one cast
    measured twice as fast as fancy indexing with a cast on float16 features."""
    return np.take(features, columns, axis=1).astype(np.float32, copy=False)
