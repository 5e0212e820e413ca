"""Dictionary extraction: the mean mask of each cell's PDSN over many (clean, occluded) pairs.

For cell J, every pair's mask ``sia_J(|f(clean) - f(occluded)|)`` is min-max normalised over its
C*H*W values and the normalised masks are averaged: the cell's ``mean_mask.txt`` (one value per
line, C, H, W order, in [0, 1]). Binarising discards the smallest tau fraction of each item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdsn.model.checkpoint import CheckpointError, load_pdsn_model, load_recognition_model
from pdsn.model.dictionary import (
    DEFAULT_TAU,
    MaskDictionary,
    binarize_by_tau,
    save_dictionary,
    write_mean_mask_txt,
)
from pdsn.model.grid import NUM_CELLS
from pdsn.model.network import PDSNNetwork
from pdsn.model.recognition import RecognitionNetwork
from pdsn.train.features import CellFeatureCache, PairFeatures
from pdsn.train.stage1 import find_pdsn_checkpoints

MEAN_MASK_DIR = "mean_masks"
MEAN_MASK_FILE = "mean_mask.txt"
DICTIONARY_FILE = "dictionary.npz"


@dataclass(frozen=True)
class DictionaryFiles:
    mean_masks: list[Path]
    dictionary: Path
    tau: float


@torch.no_grad()
def mean_mask(pdsn: PDSNNetwork, features: PairFeatures, batch_size: int = 256) -> np.ndarray:
    """Average over pairs of the min-max normalised masks, float32 (C, H, W) in [0, 1].

    A mask with no spread (max == min) carries no ranking and counts as all ones (keep all).
    """
    pdsn.eval()
    total = torch.zeros(features.clean.shape[1:], dtype=torch.float64)
    for start in range(0, len(features), batch_size):
        clean = features.clean[start : start + batch_size]
        occluded = features.occluded[start : start + batch_size]
        masks = pdsn.sia(torch.abs(clean - occluded)).flatten(1).double()
        low, high = masks.min(dim=1, keepdim=True).values, masks.max(dim=1, keepdim=True).values
        spread = high - low
        normalised = torch.where(spread > 0, (masks - low) / spread.clamp_min(1e-30), torch.ones_like(masks))
        total += normalised.sum(dim=0).reshape(total.shape)
    return (total / len(features)).clamp(0.0, 1.0).float().numpy()


def extract_mean_masks(
    checkpoints: list[Path], cache: CellFeatureCache, progress: bool = False, release: bool = True
) -> np.ndarray:
    """Mean masks (25, C, H, W) of the 25 stage-1 checkpoints on the cache's pairs per cell.

    Every checkpoint must hold the trunk and head the cache's features came from: PDSNs trained
    on another stage-0 network (or of another width or depth) are refused.
    """
    if len(checkpoints) != NUM_CELLS:
        raise ValueError(f"expected 25 stage-1 checkpoints (one per cell), got {len(checkpoints)}")
    masks = []
    for cell, path in enumerate(checkpoints):
        pdsn, _ = load_pdsn_model(path)
        _check_same_network(pdsn, cache.model, path)
        masks.append(mean_mask(pdsn, cache.cell(cell)))
        if release:
            cache.drop(cell)
        if progress:
            print(f"dictionary cell {cell:2d}: mean mask {masks[-1].mean():.3f} from {path.name}", flush=True)
    return np.stack(masks)


def recognition_model_of(pdsn_dir: str | Path) -> RecognitionNetwork:
    """The frozen stage-0 network inside the stage-1 checkpoints (read from cell 0's)."""
    return load_recognition_model(find_pdsn_checkpoints(pdsn_dir)[0])[0]


def write_dictionary(
    out: str | Path, mean_masks: np.ndarray, tau: float = DEFAULT_TAU, source: str = ""
) -> DictionaryFiles:
    """Write ``out/mean_masks/cell_JJ/mean_mask.txt`` (25 files) and ``out/dictionary.npz``.

    The .npz is the binarised dictionary (``save_dictionary``: masks plus tau and source), which
    ``pdsn export --dictionary`` takes as it is; the mean-mask folder can be given instead (then
    export binarises with its own --tau).
    """
    out = Path(out)
    paths = []
    for cell, item in enumerate(mean_masks):
        path = out / MEAN_MASK_DIR / f"cell_{cell:02d}" / MEAN_MASK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mean_mask_txt(path, item)
        paths.append(path)
    dictionary = MaskDictionary(
        masks=binarize_by_tau(mean_masks, tau),
        tau=tau,
        threshold=None,
        source=f"mean masks of 25 trained PDSNs ({source})" if source else "mean masks of 25 trained PDSNs",
    )
    save_dictionary(out / DICTIONARY_FILE, dictionary)
    return DictionaryFiles(paths, out / DICTIONARY_FILE, dictionary.tau)  # type: ignore[arg-type]


def _check_same_network(pdsn: PDSNNetwork, model: RecognitionNetwork, path: Path) -> None:
    got, expected = pdsn.architecture.to_dict(), model.architecture.to_dict()
    if _shape_of(got) != _shape_of(expected):
        raise CheckpointError(
            f"stage-1 checkpoint {path} is a network of {_described(got)}, but the features come from one "
            f"of {_described(expected)}; all 25 PDSNs must be trained on the same stage-0 network"
        )
    reference = model.state_dict()
    differing = [
        key
        for key, value in pdsn.state_dict().items()
        if not key.startswith("sia.") and not torch.equal(value, reference[key])
    ]
    if differing:
        raise CheckpointError(
            f"stage-1 checkpoint {path} holds a different trunk/head than the stage-0 network "
            f"the features were computed with ({len(differing)} tensors differ, e.g. {differing[0]}); all 25 PDSNs must be trained "
            "on the same frozen stage-0 network: retrain them from one --checkpoint"
        )


def _shape_of(architecture: dict) -> dict:
    """What fixes the feature map and the embedding; a name or a dropout rate does not."""
    return {key: value for key, value in architecture.items() if key not in ("name", "dropout")}


def _described(architecture: dict) -> str:
    """An architecture's shape in words: its layers and widths, or (for a fixed network) its name."""
    shown = [key for key in ("layers", "widths") if key in architecture] or ["name"]
    return ", ".join(f"{key} {architecture[key]}" for key in (*shown, "embedding_size"))
