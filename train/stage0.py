"""Stage 0: train the recognition network (trunk + head) with the CosFace loss.

The paper starts from an LResNet50E-IR trained with CosFace (s=30, m=0.35) on clean faces; stage 1
then trains one PDSN per grid cell on top of the frozen network. This module trains that starting
network on whatever faces it is given (here: the SYNTHETIC identities of ``pdsn.train.synthetic``),
saves it in the reference checkpoint format, and provides ``train_tiny_model``, a small genuinely
trained network for tests that need realistic weights and BN statistics.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdsn.model.checkpoint import CheckpointError, read_state_dict, save_checkpoint
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH
from pdsn.model.network import LRESNET_IR_TINY, Architecture, LResNetIR, normalize_faces
from pdsn.model.validation import check_int
from pdsn.train.cosface import MarginCosineProduct
from pdsn.train.occlusion import random_occlusion
from pdsn.train.synthetic import SyntheticFaces

try:
    from tqdm import tqdm as _tqdm
except ImportError:
    _tqdm = None

MODEL_FILENAME = "model.pth"
CLASSIFIER_FILENAME = "classifier.pth"

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
# Chance that a training image gets a random occluder when augment_occlusion is on.
OCCLUSION_PROBABILITY = 0.5

# The network train_tiny_model trains: one block per stage, narrow, the usual 7x6 feature map.
TINY_ARCHITECTURE = LRESNET_IR_TINY
TINY_IDENTITIES = 40
TINY_IMAGES_PER_IDENTITY = 12
TINY_HOLDOUT_PER_IDENTITY = 2
TINY_EPOCHS = 6


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean CosFace loss, training accuracy (argmax of the margin logits), last lr."""

    epoch: int
    loss: float
    accuracy: float
    learning_rate: float
    seconds: float

    def describe(self, stage: str, epochs: int) -> str:
        return (
            f"{stage} epoch {self.epoch}/{epochs}: loss {self.loss:.4f}, train accuracy "
            f"{self.accuracy:.3f}, lr {self.learning_rate:.4g}, {self.seconds:.1f}s"
        )


@dataclass
class TinyModel:
    """A small trained network, its classifier, and held-out SYNTHETIC images of its identities."""

    model: LResNetIR
    classifier: MarginCosineProduct
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    train_seconds: float


def train_recognition(
    architecture: Architecture,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    augment_occlusion: bool = False,
    progress: bool = True,
) -> tuple[LResNetIR, MarginCosineProduct, list[EpochStats]]:
    """Train an LResNet-IR network and its CosFace classifier from scratch; returned in eval mode.

    ``labels`` are class ids; the classifier has ``max(labels) + 1`` rows. Optimiser: SGD with
    momentum 0.9 and weight decay 5e-4 (the reference's choice), a linear warm-up over the first
    tenth of the steps (at most 100), then a cosine decay of ``lr`` to zero, set per step.
    Measured on the task of ``train_tiny_model`` (6 epochs): AdamW (weight decay 0.05) at lr 1e-3
    and 3e-3 reached held-out separations of 0.35 and 0.48, this SGD at lr 0.1 0.66, in less time.
    ``augment_occlusion`` puts a random occluder (``random_occlusion``) on each training image
    with probability 0.5, drawn afresh every epoch. Seeding: initialisation and dropout by
    ``torch.manual_seed(seed)`` inside a forked RNG (the caller's global RNG is left as it was),
    shuffling by a seeded ``torch.Generator``, occluders by ``np.random.default_rng(seed)``.
    """
    faces, targets = _check_training_data(images, labels)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    total_steps = epochs * batches_per_epoch(len(faces), batch_size)
    warmup = warmup_steps(total_steps)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LResNetIR(architecture).train()
        classifier = MarginCosineProduct(architecture.embedding_size, int(targets.max()) + 1)
        optimizer = torch.optim.SGD(
            [*model.parameters(), *classifier.parameters()],
            lr=float(lr),
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
        )
        shuffle = torch.Generator().manual_seed(seed)
        occluder_rng = np.random.default_rng(seed) if augment_occlusion else None
        history: list[EpochStats] = []
        step = 0
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            batches = shuffled_batches(len(faces), batch_size, shuffle)
            if progress and _tqdm is not None:
                batches = _tqdm(batches, desc=f"stage0 epoch {epoch}/{epochs}", leave=False)
            loss_sum, correct, seen = 0.0, 0, 0
            for index in batches:
                batch_faces = faces[index]
                if occluder_rng is not None:
                    batch_faces = _occlude_some(batch_faces, occluder_rng)
                x = normalize_faces(batch_faces)
                y = torch.from_numpy(targets[index])
                rate = learning_rate_at(float(lr), step, warmup, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                logits = classifier(model(x), y)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(index)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(index)
            elapsed = time.perf_counter() - started
            stats = EpochStats(epoch, loss_sum / seen, correct / seen, rate, elapsed)
            history.append(stats)
            if progress:
                print(stats.describe("stage0", epochs), flush=True)
    return model.eval(), classifier.eval(), history


def save_stage0(
    directory: str | Path, model: LResNetIR, classifier: MarginCosineProduct, epoch: int = 0
) -> tuple[Path, Path]:
    """Write ``model.pth`` (the reference checkpoint format) and ``classifier.pth`` (bare
    ``{'weight': ...}`` state dict) into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_path, classifier_path = directory / MODEL_FILENAME, directory / CLASSIFIER_FILENAME
    save_checkpoint(model_path, model, epoch=epoch)
    torch.save(classifier.state_dict(), classifier_path)
    return model_path, classifier_path


def load_classifier(path: str | Path, embedding_size: int) -> MarginCosineProduct:
    """Read a classifier saved by ``save_stage0`` (bare ``{'weight': [classes, E]}``), eval mode.

    ``embedding_size`` is the model's; a classifier trained for another width is refused.
    """
    state, _ = read_state_dict(path)
    weight = state.get("weight")
    if set(state) != {"weight"} or weight is None or weight.ndim != 2:
        raise CheckpointError(
            f"classifier {path} holds keys {sorted(state)}; expected the bare CosFace state dict "
            f"{{'weight': [classes, {embedding_size}]}} that stage 0 saves as {CLASSIFIER_FILENAME}"
        )
    if weight.shape[1] != embedding_size:
        raise CheckpointError(
            f"classifier {path} has weight {list(weight.shape)}, i.e. it scores "
            f"{weight.shape[1]}-d embeddings, but the model produces {embedding_size}-d ones; "
            f"pass the {CLASSIFIER_FILENAME} saved with this model checkpoint"
        )
    classifier = MarginCosineProduct(embedding_size, int(weight.shape[0]))
    classifier.load_state_dict({"weight": weight.to(torch.float32)})
    return classifier.eval()


@torch.no_grad()
def embed(model: LResNetIR, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Raw embeddings of uint8 NHWC faces, (N, embedding_size); put the model in eval mode first."""
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return torch.cat([model(normalize_faces(chunk)) for chunk in chunks])


def embedding_separation(model: LResNetIR, images: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity of same-identity pairs minus that of different-identity pairs."""
    embeddings = F.normalize(embed(model, images), dim=1)
    cosine = embeddings @ embeddings.T
    ids = torch.as_tensor(np.asarray(labels))
    same = ids[:, None] == ids[None, :]
    same &= ~torch.eye(len(ids), dtype=torch.bool)
    different = ids[:, None] != ids[None, :]
    if not same.any() or not different.any():
        raise ValueError(
            f"labels must hold at least two images of one identity and two identities, "
            f"got {len(ids)} labels with {len(torch.unique(ids))} distinct values"
        )
    return float(cosine[same].mean() - cosine[different].mean())


def train_tiny_model(seed: int = 0, progress: bool = False) -> TinyModel:
    """Train ``TINY_ARCHITECTURE`` on SYNTHETIC faces, 40 identities x 10 images, in ~20 s.

    For tests that need a genuinely trained network: weights and BN running statistics come from
    training (train mode) on the synthetic faces. Two more images per identity are held out;
    their embeddings separate the identities clearly (``embedding_separation`` about 0.65).
    Training takes about 20 s on 2 idle CPU cores: share one result per test session.
    """
    images, labels = SyntheticFaces(TINY_IDENTITIES, TINY_IMAGES_PER_IDENTITY, seed=seed).generate()
    holdout = np.arange(len(labels)) % TINY_IMAGES_PER_IDENTITY >= (
        TINY_IMAGES_PER_IDENTITY - TINY_HOLDOUT_PER_IDENTITY
    )
    started = time.perf_counter()
    model, classifier, _ = train_recognition(
        TINY_ARCHITECTURE,
        images[~holdout],
        labels[~holdout],
        epochs=TINY_EPOCHS,
        batch_size=32,
        lr=0.1,
        seed=seed,
        progress=progress,
    )
    elapsed = time.perf_counter() - started
    return TinyModel(model, classifier, images[holdout], labels[holdout], elapsed)


def _check_training_data(images: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    expected = f"uint8 (N, {CROP_HEIGHT}, {CROP_WIDTH}, 3) aligned RGB crops with N >= 2"
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape[1:] != (CROP_HEIGHT, CROP_WIDTH, 3)
        or len(images) < 2
    ):
        raise ValueError(
            f"images must be {expected}, got {type(images).__name__} "
            f"dtype {getattr(images, 'dtype', None)} shape {getattr(images, 'shape', None)}"
        )
    targets = np.asarray(labels)
    if targets.shape != (len(images),) or targets.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integer class ids, one per image, shape ({len(images)},); got dtype "
            f"{targets.dtype} shape {targets.shape}"
        )
    if targets.min() < 0:
        raise ValueError(f"labels must be class ids >= 0, got minimum {targets.min()}")
    return images, targets.astype(np.int64)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: leave as is), restoring the setting after.

    Small networks train faster on one thread: on a shared 2-core machine torch's thread pool
    measured 3 to 15 times slower than a single thread for the tiny architecture.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for torch's default), got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_labels_fit(labels: np.ndarray | torch.Tensor, classifier: MarginCosineProduct) -> None:
    """Training labels must index the classifier's classes: the identities stage 0 was trained on."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classifier.out_features:
        raise ValueError(
            f"labels run {low}..{high}, but the classifier has {classifier.out_features} classes "
            f"(0..{classifier.out_features - 1}); later stages train on the identities stage 0 was "
            "trained on: use the same data, identities and seed"
        )


def batches_per_epoch(count: int, batch_size: int) -> int:
    """Full batches plus the partial last one, unless that holds one image (BN needs two)."""
    full, rest = divmod(count, batch_size)
    return full + (1 if rest >= 2 else 0)


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches of row indices in a random order (see ``batches_per_epoch``)."""
    order = torch.randperm(count, generator=generator).numpy()
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(batches_per_epoch(count, batch_size))]


def warmup_steps(total_steps: int) -> int:
    """A tenth of the steps, at least 1 and at most 100."""
    return min(100, max(1, total_steps // 10))


def learning_rate_at(base: float, step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _occlude_some(faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = faces.copy()
    for k in np.flatnonzero(rng.random(len(faces)) < OCCLUSION_PROBABILITY):
        out[k] = random_occlusion(faces[k], rng).image
    return out
