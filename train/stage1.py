"""Stage 1: one PDSN per grid cell, trained on cached frozen-trunk features.

The PDSN of cell J is the stage-0 network plus a mask generator ``sia`` that maps
|f(clean) - f(occluded)| to a (C, H, W) mask in (0, 1) multiplying both feature maps. Trunk, head
and CosFace classifier stay frozen (BN in eval mode); only ``sia`` trains, on the loss
0.5 CE(clean) + 0.5 CE(occluded) + 10 L1(masked occluded, masked clean) (docs/architecture.md, "The reference method").
Checkpoints are in the reference format with the trunk and head keys plus the ``sia.*`` keys.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pdsn.model.checkpoint import save_checkpoint
from pdsn.model.dlib_resnet import DlibPDSN, DlibResNet
from pdsn.model.grid import NUM_CELLS, check_cell_id, validate_cell_ids
from pdsn.model.network import LResNetIR, PDSNNetwork
from pdsn.model.validation import check_int
from pdsn.train.cosface import MarginCosineProduct
from pdsn.train.features import CellFeatureCache, PairFeatures
from pdsn.train.stage0 import (
    MOMENTUM,
    WEIGHT_DECAY,
    batches_per_epoch,
    check_labels_fit,
    learning_rate_at,
    shuffled_batches,
    warmup_steps,
)

L1_WEIGHT = 10.0
_CHECKPOINT_PATTERN = re.compile(r"^cell_(\d+)\.pth$")


@dataclass(frozen=True)
class Stage1Config:
    """Optimiser settings for one PDSN (SGD, momentum 0.9, warm-up then cosine decay)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    l1_weight: float = L1_WEIGHT
    seed: int = 0


@dataclass(frozen=True)
class Stage1EpochStats:
    """Mean loss terms over one epoch and the mean mask value."""

    epoch: int
    loss: float
    ce_clean: float
    ce_occluded: float
    l1: float
    mask_mean: float
    seconds: float


@dataclass
class Stage1Result:
    cell: int
    pdsn: PDSNNetwork
    history: list[Stage1EpochStats]
    optimizer_state: dict = field(default_factory=dict)


def checkpoint_name(cell: int) -> str:
    """File name of cell ``cell``'s stage-1 checkpoint: ``cell_07.pth``."""
    return f"cell_{check_cell_id(cell, 'cell'):02d}.pth"


def pdsn_from_recognition(model: LResNetIR | DlibResNet, seed: int) -> PDSNNetwork | DlibPDSN:
    """A PDSN holding ``model``'s weights and a freshly initialised (seeded) mask generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pdsn = DlibPDSN() if isinstance(model, DlibResNet) else PDSNNetwork(model.architecture)
    missing, unexpected = pdsn.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("sia.") for key in missing):
        raise RuntimeError(f"stage-0 weights do not fit the PDSN network: missing {missing}, unexpected {unexpected}")
    return pdsn


def train_pdsn(
    model: LResNetIR,
    classifier: MarginCosineProduct,
    features: PairFeatures,
    cell: int,
    config: Stage1Config = Stage1Config(),
    progress: bool = False,
) -> Stage1Result:
    """Train the mask generator of cell ``cell`` on cached pair features; returned in eval mode."""
    cell = check_cell_id(cell, "cell")
    epochs = check_int(config.epochs, "epochs", minimum=1)
    batch_size = check_int(config.batch_size, "batch_size", minimum=2)
    if len(features) < 2:
        raise ValueError(f"stage 1 needs at least 2 training pairs, got {len(features)}")
    check_labels_fit(features.labels, classifier)
    pdsn = pdsn_from_recognition(model, config.seed + cell)
    pdsn.requires_grad_(False)
    pdsn.sia.requires_grad_(True)
    pdsn.eval()
    pdsn.sia.train()
    frozen_classifier = copy.deepcopy(classifier).requires_grad_(False).eval()
    optimizer = torch.optim.SGD(pdsn.sia.parameters(), lr=config.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(config.seed * NUM_CELLS + cell)
    total = epochs * batches_per_epoch(len(features), batch_size)
    warmup, step = warmup_steps(total), 0
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        sums, seen = torch.zeros(5, dtype=torch.float64), 0
        for index in shuffled_batches(len(features), batch_size, generator):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config.lr, step, warmup, total)
            terms = _loss_terms(pdsn, frozen_classifier, features, torch.from_numpy(index))
            loss = 0.5 * terms[0] + 0.5 * terms[1] + config.l1_weight * terms[2]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += len(index) * torch.stack([loss.detach(), *(t.detach() for t in terms)]).double()
            seen += len(index)
        mean_loss, ce_clean, ce_occluded, l1, mask_mean = (sums / seen).tolist()
        stats = Stage1EpochStats(epoch, mean_loss, ce_clean, ce_occluded, l1, mask_mean, time.perf_counter() - started)
        history.append(stats)
        if progress:
            print(
                f"stage1 cell {cell:2d} epoch {epoch}/{epochs}: loss {stats.loss:.4f} (CE clean "
                f"{stats.ce_clean:.3f}, CE occluded {stats.ce_occluded:.3f}, L1 {stats.l1:.4f}), "
                f"mean mask {stats.mask_mean:.3f}",
                flush=True,
            )
    return Stage1Result(cell, pdsn.eval(), history, optimizer.state_dict())


def train_cells(
    model: LResNetIR,
    classifier: MarginCosineProduct,
    cache: CellFeatureCache,
    cells: list[int],
    out: str | Path,
    config: Stage1Config = Stage1Config(),
    progress: bool = False,
    release: bool = True,
) -> dict[int, list[Stage1EpochStats]]:
    """Train and save the PDSN of every cell in ``cells`` into ``out``; returns their histories.

    ``release`` frees each cell's cached features after use; keep them (False) to extract the
    dictionary on the same pairs without computing them again.
    """
    cells = validate_cell_ids(cells, "cells")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    histories = {}
    for cell in cells:
        result = train_pdsn(model, classifier, cache.cell(cell), cell, config, progress)
        save_pdsn(out / checkpoint_name(cell), result)
        if release:
            cache.drop(cell)
        histories[cell] = result.history
    return histories


def save_pdsn(path: str | Path, result: Stage1Result) -> None:
    """Reference format: ``{'epoch', 'optim_state_dict', 'model_state_dict'}`` with ``sia.*`` keys."""
    save_checkpoint(path, result.pdsn, epoch=len(result.history), optim_state_dict=result.optimizer_state)


def find_pdsn_checkpoints(directory: str | Path) -> list[Path]:
    """The 25 stage-1 checkpoints ``cell_00.pth .. cell_24.pth`` of ``directory``, in cell order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"stage-1 folder {str(directory)!r} does not exist; train it with `pdsn train-pdsn --cells all --out DIR`"
        )
    found = {
        int(match.group(1)): path
        for path in directory.iterdir()
        if (match := _CHECKPOINT_PATTERN.match(path.name)) and path.is_file()
    }
    missing = [cell for cell in range(NUM_CELLS) if cell not in found]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks the stage-1 checkpoints of cells {missing} (expected "
            f"cell_00.pth .. cell_24.pth, one per grid cell); train them with "
            f"`pdsn train-pdsn --cell {missing[0]} --out {directory}`"
        )
    return [found[cell] for cell in range(NUM_CELLS)]


def _loss_terms(
    pdsn: PDSNNetwork,
    classifier: MarginCosineProduct,
    features: PairFeatures,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE(clean), CE(occluded), L1(masked occluded, masked clean), mean mask of one batch."""
    clean, occluded, labels = features.clean[index], features.occluded[index], features.labels[index]
    mask = pdsn.sia(torch.abs(clean - occluded))
    masked_clean, masked_occluded = clean * mask, occluded * mask
    ce_clean = F.cross_entropy(classifier(pdsn.head(masked_clean), labels), labels)
    ce_occluded = F.cross_entropy(classifier(pdsn.head(masked_occluded), labels), labels)
    return ce_clean, ce_occluded, F.l1_loss(masked_occluded, masked_clean), mask.mean()
