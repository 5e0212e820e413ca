"""Stage 2: fine-tune the recognition network with occluded faces and their FDMs.

Each batch holds clean faces and randomly occluded copies; an occluded face's feature map is
multiplied by the FDM of its occluded cells (the AND of their dictionary items). Loss
0.5 CE(clean) + 0.5 CE(occluded, FDM-masked), CosFace; SGD at lr 1e-3 for the head and the
classifier and 1e-4 (x0.1) for the trunk (docs/architecture.md, "The reference method").
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pdsn.model.dictionary import MaskDictionary
from pdsn.model.network import LResNetIR, normalize_faces
from pdsn.model.validation import check_int
from pdsn.train.cosface import MarginCosineProduct
from pdsn.train.data import LabelledFaces
from pdsn.train.occlusion import OCCLUDER_KINDS, random_occlusion
from pdsn.train.stage0 import (
    MOMENTUM,
    WEIGHT_DECAY,
    EpochStats,
    batches_per_epoch,
    check_labels_fit,
    learning_rate_at,
    shuffled_batches,
    warmup_steps,
)


@dataclass(frozen=True)
class Stage2Config:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    trunk_lr_scale: float = 0.1
    seed: int = 0
    occluders: tuple[str, ...] = OCCLUDER_KINDS


def check_dictionary_fits(dictionary: MaskDictionary, model: LResNetIR, what: str = "dictionary") -> None:
    """Refuse a dictionary made for another feature map (another width of network)."""
    expected = model.architecture.feature_shape
    if tuple(dictionary.feature_shape) != tuple(expected):
        raise ValueError(
            f"{what} masks feature maps of shape {tuple(dictionary.feature_shape)}, but the model's "
            f"trunk outputs {tuple(expected)} (layers {list(model.architecture.layers)}, widths "
            f"{list(model.architecture.widths)}); use the dictionary extracted from this model's PDSNs"
        )


def finetune(
    model: LResNetIR,
    classifier: MarginCosineProduct,
    dictionary: MaskDictionary,
    faces: LabelledFaces,
    config: Stage2Config = Stage2Config(),
    progress: bool = False,
) -> tuple[LResNetIR, MarginCosineProduct, list[EpochStats]]:
    """Fine-tuned copies of ``model`` and ``classifier`` (eval mode) and the per-epoch history.

    Occluders (``config.occluders``, drawn afresh every epoch from ``np.random.default_rng(seed)``)
    cover one random cell (bar, patch) or the eyes or lower face (sunglasses, scarf); the cells
    they cover select the FDM. The history's accuracy is that of the occluded faces.
    """
    check_dictionary_fits(dictionary, model)
    epochs = check_int(config.epochs, "epochs", minimum=1)
    batch_size = check_int(config.batch_size, "batch_size", minimum=2)
    labels = np.asarray(faces.labels, dtype=np.int64)
    check_labels_fit(labels, classifier)
    model, classifier = copy.deepcopy(model).train(), copy.deepcopy(classifier).train()
    trunk = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
    head = [*model.fc.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(
        [
            {"params": head, "base_lr": config.lr},
            {"params": trunk, "base_lr": config.lr * config.trunk_lr_scale},
        ],
        lr=config.lr,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    total = epochs * batches_per_epoch(len(labels), batch_size)
    warmup, step = warmup_steps(total), 0
    rng = np.random.default_rng(config.seed)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        shuffle = torch.Generator().manual_seed(config.seed)
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            for index in shuffled_batches(len(labels), batch_size, shuffle):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(group["base_lr"], step, warmup, total)
                clean = faces.images[index]
                occlusions = [random_occlusion(image, rng, config.occluders) for image in clean]
                occluded = np.stack([o.image for o in occlusions])
                fdm = torch.from_numpy(dictionary.combine(np.stack([o.cells for o in occlusions])))
                target = torch.from_numpy(labels[index])
                features = model.features(normalize_faces(np.concatenate([clean, occluded])))
                masked = torch.cat([features[: len(index)], features[len(index) :] * fdm])
                logits = classifier(model.head(masked), torch.cat([target, target]))
                loss = 0.5 * F.cross_entropy(logits[: len(index)], target) + 0.5 * F.cross_entropy(
                    logits[len(index) :], target
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(index)
                correct += int((logits[len(index) :].argmax(dim=1) == target).sum())
                seen += len(index)
            stats = EpochStats(
                epoch,
                loss_sum / seen,
                correct / seen,
                optimizer.param_groups[0]["lr"],
                time.perf_counter() - started,
            )
            history.append(stats)
            if progress:
                print(stats.describe("stage2", epochs), flush=True)
    return model.eval(), classifier.eval(), history
