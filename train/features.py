"""Frozen-trunk features of (clean, occluded) pairs, computed once and reused.

Stage 1 freezes the trunk, so the (C, H, W) feature maps of a training pair never change: they are
computed once per image, and the 25 PDSNs and the dictionary extraction train and run on the cache
instead of the images. The clean faces' features are shared by every cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pdsn.model.recognition import RecognitionNetwork
from pdsn.train.data import FacePairs, LabelledFaces, occlude_cell

FEATURE_BATCH = 128


@dataclass(frozen=True)
class PairFeatures:
    """Trunk feature maps of pairs: ``clean`` and ``occluded`` (N, C, H, W), ``labels`` (N,)."""

    clean: torch.Tensor
    occluded: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def trunk_features(model: RecognitionNetwork, images: np.ndarray, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """(N, C, H, W) trunk output of uint8 NHWC faces, with the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model.features(model.normalise(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def pair_features(model: RecognitionNetwork, pairs: FacePairs) -> PairFeatures:
    """Features of given pairs (e.g. a reference pair list)."""
    return PairFeatures(
        trunk_features(model, pairs.clean),
        trunk_features(model, pairs.occluded),
        torch.from_numpy(pairs.labels),
    )


class CellFeatureCache:
    """Features of labelled faces and, per cell, of ``pairs_per_cell`` copies with it occluded.

    The clean faces' features are computed on construction and shared by every cell; a cell's
    occluded features on first use (``occlude_cell`` says which faces each cell's pairs use; None
    is one pair per face).
    """

    def __init__(
        self, model: RecognitionNetwork, faces: LabelledFaces, seed: int, pairs_per_cell: int | None = None
    ) -> None:
        fields = model.contract_fields()
        if faces.images.shape[1:3] != (fields["height"], fields["width"]):
            raise ValueError(
                f"{faces.source}: the faces are {faces.images.shape[2]}x{faces.images.shape[1]} (WxH) crops, but "
                f"{model.architecture.name} takes {fields['width']}x{fields['height']}; align them for this network"
            )
        self.model, self.faces, self.seed, self.pairs_per_cell = model, faces, seed, pairs_per_cell
        self.clean = trunk_features(model, faces.images)
        self._cells: dict[int, PairFeatures] = {}

    def cell(self, cell: int) -> PairFeatures:
        if cell not in self._cells:
            pairs, rows = occlude_cell(self.faces, cell, self.seed, self.pairs_per_cell)
            self._cells[cell] = PairFeatures(
                self.clean[torch.from_numpy(rows)],
                trunk_features(self.model, pairs.occluded),
                torch.from_numpy(pairs.labels),
            )
        return self._cells[cell]

    def drop(self, cell: int) -> None:
        """Forget a cell's occluded features (memory) once its PDSN is trained."""
        self._cells.pop(cell, None)
