"""``pdsn train-occlusion``: train the occlusion estimator and choose its per-cell thresholds.

Faces: SYNTHETIC identities (``pdsn.train.synthetic``; training and validation identities come from
different seeds) or a folder of aligned 112x96 crops (sub-folders are identities, held out whole).
Each epoch every training face is drawn afresh: clean with probability ``clean_fraction``, else
behind one occluder of a kind drawn from ``kinds``, labelled by the grid's coverage rule
(``cells_from_mask(mask, min_coverage)``). Validation is fixed: every validation face once clean
and once behind each kind, with occluders from another random stream than training's. The loss is
BCE on the 25 cell logits (AdamW, warm-up then cosine decay).

Thresholds, per cell, on validation: first the one that maximises that cell's F1 over all
validation views; then, while more than ``max_clean_false_alarm`` of the clean views have any cell
flagged, the threshold of the cell that flags the most clean views is raised just enough to clear
one more. Everything is seeded: the same config gives the same files on the same machine and
thread count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pdsn.model.estimator_contract import check_thresholds
from pdsn.model.grid import DEFAULT_MIN_COVERAGE, NUM_CELLS
from pdsn.model.network import normalize_faces
from pdsn.model.occlusion_net import (
    EstimatorArchitecture,
    OcclusionNet,
    TrainedEstimator,
    architecture_summary,
    predict_probabilities,
    save_estimator,
)
from pdsn.model.validation import check_int
from pdsn.train.data import IMAGE_SUFFIXES, SYNTHETIC, read_face
from pdsn.train.estimator_evaluation import cell_report
from pdsn.train.occlusion import ESTIMATOR_OCCLUDER_KINDS, random_occlusion
from pdsn.train.stage0 import (
    batches_per_epoch,
    learning_rate_at,
    shuffled_batches,
    torch_threads,
    warmup_steps,
)
from pdsn.train.synthetic import SyntheticFaces

ESTIMATOR_FILENAME = "occlusion_estimator.pth"
CLEAN = "none"
# Synthetic identity seeds: training and validation faces are drawn from seed + these, apart from
# each other and from the evaluation seeds of pdsn.train.evaluate (10 000) and identification (20 000).
TRAIN_FACE_SEED = 30_000
VALIDATION_FACE_SEED = 40_000
# Random stream tags of the training and validation occluders (pdsn.train.data lists the others).
_TRAIN_OCCLUDER_STREAM = 6
_VALIDATION_OCCLUDER_STREAM = 7
_FOLDER_SPLIT_STREAM = 8
_THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)
_THRESHOLD_CEILING = 0.999
_FOLDER_VALIDATION_SHARE = 0.2


@dataclass(frozen=True)
class EstimatorConfig:
    """Everything that decides a trained estimator; the defaults make the shipped one."""

    data: str = SYNTHETIC
    seed: int = 0
    identities: int = 400
    images_per_identity: int = 5
    validation_identities: int = 120
    validation_images_per_identity: int = 5
    epochs: int = 16
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    clean_fraction: float = 0.25
    # BCE weight of an occluded cell: most cells are clear, and rarely covered ones (the corners) need the push.
    positive_weight: float = 3.0
    kinds: tuple[str, ...] = ESTIMATOR_OCCLUDER_KINDS
    min_coverage: float = DEFAULT_MIN_COVERAGE
    max_clean_false_alarm: float = 0.02
    architecture: EstimatorArchitecture = EstimatorArchitecture()
    threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("identities", "images_per_identity", "validation_identities", "validation_images_per_identity"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=2)
        check_int(self.seed, "seed", minimum=0)
        for name in ("lr", "positive_weight"):
            if not 0.0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        for name in ("clean_fraction", "max_clean_false_alarm"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a share of faces, strictly between 0 and 1; got {getattr(self, name)!r}")
        if not self.kinds or any(kind not in ESTIMATOR_OCCLUDER_KINDS for kind in self.kinds):
            raise ValueError(
                f"kinds must be a non-empty tuple drawn from {ESTIMATOR_OCCLUDER_KINDS}, got {self.kinds!r}"
            )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["architecture"] = self.architecture.to_dict()
        data["kinds"] = list(self.kinds)
        return data


@dataclass(frozen=True)
class FaceSet:
    """Clean aligned crops uint8 (N, H, W, 3) and their landmarks (N, 5, 2), or None for the template's."""

    images: np.ndarray
    landmarks: np.ndarray | None
    source: str

    def landmark(self, index: int) -> np.ndarray | None:
        return None if self.landmarks is None else self.landmarks[index]


@dataclass(frozen=True)
class Views:
    """Faces with or without an occluder: images, 0/1 cell labels (N, 25), and each view's kind."""

    images: np.ndarray
    cells: np.ndarray
    kinds: tuple[str, ...]


def load_faces(config: EstimatorConfig) -> tuple[FaceSet, FaceSet]:
    """Training and validation faces with no identity in both."""
    if config.data == SYNTHETIC:
        return tuple(  # type: ignore[return-value]
            _synthetic(count, per, base + config.seed)
            for count, per, base in (
                (config.identities, config.images_per_identity, TRAIN_FACE_SEED),
                (config.validation_identities, config.validation_images_per_identity, VALIDATION_FACE_SEED),
            )
        )
    return read_training_folder(config.data, config.seed)


def read_training_folder(root: str | Path, seed: int) -> tuple[FaceSet, FaceSet]:
    """Aligned crops (112x96, or dlib's 150x150 chips; one size) anywhere under ``root``, split into training
    and validation faces.

    Each folder that holds images is one identity; a fifth of the identities (at least one) are
    held out for validation, chosen by ``seed``. With all images in one folder, a fifth of the
    images are held out instead, and the split records that identities could not be kept apart.
    Files that are not readable crops of either size are skipped and counted; a folder with no usable
    face, or with only one, or with crops of both sizes, is refused.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {str(root)!r} is not a folder; pass 'synthetic' or a folder of aligned 112x96 (or 150x150) crops "
            f"({'/'.join(IMAGE_SUFFIXES)})"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, groups, skipped = [], [], []
    for file in files:
        try:
            images.append(read_face(file))
        except ValueError as error:
            skipped.append(str(error))
            continue
        groups.append(file.parent.relative_to(root).as_posix())
    if len(images) < 2:
        found = f"{len(files)} image file(s)" + (f", {len(skipped)} unusable, e.g. {skipped[0]}" if skipped else "")
        raise ValueError(
            f"--data {root} holds {len(images)} usable face(s) ({found}); training the occlusion estimator needs "
            f"at least 2 aligned {IMAGE_SUFFIXES} crops of 112x96 pixels (96 wide, 112 high), or of 150x150, under it: align the "
            "images first (5-point template), or pass --data synthetic"
        )
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        raise ValueError(
            f"--data {root} mixes crop sizes {sizes} (height, width); the estimator reads one size, its bundle's"
        )
    names = sorted(set(groups))
    rng = np.random.default_rng([seed, _FOLDER_SPLIT_STREAM])
    group_of = np.array([names.index(g) for g in groups])
    if len(names) >= 2:
        held = rng.permutation(len(names))[: max(1, round(_FOLDER_VALIDATION_SHARE * len(names)))]
        validation = np.isin(group_of, held)
        split = f"{len(held)} of {len(names)} identity folders held out"
    else:
        validation = np.zeros(len(images), dtype=bool)
        validation[rng.permutation(len(images))[: max(1, round(_FOLDER_VALIDATION_SHARE * len(images)))]] = True
        split = "one folder: a fifth of the images held out (identities could not be kept apart)"
    stack = np.stack(images)
    source = f"{root}: {len(images)} faces ({len(skipped)} files skipped as unusable), {split}"
    return FaceSet(stack[~validation], None, source), FaceSet(stack[validation], None, source)


def training_views(faces: FaceSet, config: EstimatorConfig, epoch: int) -> Views:
    """One epoch's draw: each face clean (``clean_fraction``) or behind a random occluder of ``kinds``."""
    rng = np.random.default_rng([config.seed, _TRAIN_OCCLUDER_STREAM, epoch])
    images, cells, kinds = faces.images.copy(), np.zeros((len(faces.images), NUM_CELLS), np.float32), []
    for index, face in enumerate(faces.images):
        if rng.uniform() < config.clean_fraction:
            kinds.append(CLEAN)
            continue
        occlusion = random_occlusion(face, rng, config.kinds, faces.landmark(index), config.min_coverage)
        images[index], cells[index] = occlusion.image, occlusion.cells
        kinds.append(occlusion.kind)
    return Views(images, cells, tuple(kinds))


def validation_views(faces: FaceSet, config: EstimatorConfig) -> Views:
    """Every validation face clean, then once behind each kind (held-out occluder draws)."""
    rng = np.random.default_rng([config.seed, _VALIDATION_OCCLUDER_STREAM])
    images = [faces.images]
    cells = [np.zeros((len(faces.images), NUM_CELLS), np.float32)]
    kinds = [CLEAN] * len(faces.images)
    for kind in config.kinds:
        draws = [
            random_occlusion(face, rng, (kind,), faces.landmark(index), config.min_coverage)
            for index, face in enumerate(faces.images)
        ]
        images.append(np.stack([d.image for d in draws]))
        cells.append(np.stack([d.cells for d in draws]))
        kinds += [kind] * len(draws)
    return Views(np.concatenate(images), np.concatenate(cells), tuple(kinds))


def select_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, clean: np.ndarray, max_clean_false_alarm: float
) -> np.ndarray:
    """Per-cell thresholds in (0, 1): best F1 per cell, then raised until the clean false alarms are low enough.

    ``probabilities`` and ``labels`` (N, 25) are all validation views; ``clean`` marks the views
    with no occluder, on which at most ``max_clean_false_alarm`` may have any cell flagged. No
    threshold is raised past ``_THRESHOLD_CEILING``: a clean view flagged with a probability above it
    stays flagged (and is counted in the validation metrics).
    """
    thresholds = np.empty(NUM_CELLS)
    for cell in range(NUM_CELLS):
        positive = labels[:, cell] > 0.5
        flagged = probabilities[:, cell, None] >= _THRESHOLD_GRID[None, :]
        tp = (flagged & positive[:, None]).sum(axis=0)
        f1 = 2 * tp / np.maximum(flagged.sum(axis=0) + positive.sum(), 1)
        thresholds[cell] = _THRESHOLD_GRID[int(np.argmax(f1))] if positive.any() else 0.5
    clean_probabilities = probabilities[clean]
    allowed = int(np.floor(max_clean_false_alarm * len(clean_probabilities)))
    while True:
        flags = clean_probabilities >= thresholds
        counts = np.where(thresholds < _THRESHOLD_CEILING, flags.sum(axis=0), 0)
        if int(flags.any(axis=1).sum()) <= allowed or not counts.any():
            break
        cell = int(np.argmax(counts))
        lowest = float(clean_probabilities[flags[:, cell], cell].min())
        thresholds[cell] = min(_THRESHOLD_CEILING, np.ceil((lowest + 1e-9) * 1000) / 1000)
    return check_thresholds(thresholds)


def train_estimator(config: EstimatorConfig = EstimatorConfig(), progress: bool = True) -> TrainedEstimator:
    """Train on ``config.data`` and return the estimator with its thresholds and its record."""
    with torch_threads(config.threads):
        started = time.perf_counter()
        train_faces, validation_faces = load_faces(config)
        size = tuple(train_faces.images.shape[1:3])
        config = dataclasses.replace(config, architecture=dataclasses.replace(config.architecture, input_size=size))
        validation = validation_views(validation_faces, config)
        model, history = _fit(train_faces, config, progress)
        probabilities = predict_probabilities(model, validation.images)
        clean = np.asarray(validation.kinds) == CLEAN
        thresholds = select_thresholds(probabilities, validation.cells, clean, config.max_clean_false_alarm)
        predicted = (probabilities >= thresholds).astype(np.float32)
        metrics = cell_report(
            predicted[~clean], validation.cells[~clean], np.asarray(validation.kinds)[~clean], predicted[clean]
        )
        seconds = time.perf_counter() - started
        threads = torch.get_num_threads()
    record = {
        "what": f"occlusion estimator for the 5x5 PDSN grid over {size[1]}x{size[0]} crops, trained on "
        f"{'SYNTHETIC faces' if config.data == SYNTHETIC else 'the faces of ' + str(config.data)} and drawn occluders "
        "by `pdsn train-occlusion`; probabilities >= the per-cell thresholds mark occluded cells",
        "min_coverage": config.min_coverage,
        "network": architecture_summary(config.architecture),
        "training": {
            "config": config.to_dict(),
            "faces": {"train": len(train_faces.images), "validation": len(validation_faces.images)},
            "source": {"train": train_faces.source, "validation": validation_faces.source},
            "history": history,
            "seconds": round(seconds, 1),
            "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": threads},
        },
        "validation": {"views": len(validation.images), **metrics},
    }
    if progress:
        print(
            f"validation: F1 {metrics['all']['f1']:.3f}, clean faces flagged {100 * metrics['clean_false_alarm_rate']:.2f}%"
            f"; {seconds:.0f} s in all",
            flush=True,
        )
    return TrainedEstimator(model, thresholds, record)


def train_occlusion(out: str | Path, config: EstimatorConfig = EstimatorConfig(), progress: bool = True) -> Path:
    """Train and write ``out/occlusion_estimator.pth`` and its ``.json``; returns the ``.pth`` path."""
    path = Path(out) / ESTIMATOR_FILENAME
    if path.exists() or path.with_suffix(".json").exists():
        raise FileExistsError(
            f"{path} or its .json already exists; choose another --out folder or delete the old estimator first"
        )
    save_estimator(path, train_estimator(config, progress))
    return path


def _fit(faces: FaceSet, config: EstimatorConfig, progress: bool) -> tuple[OcclusionNet, list[dict]]:
    steps_per_epoch = batches_per_epoch(len(faces.images), config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(faces.images)} training face(s) make no batch of 2; add faces")
    total = config.epochs * steps_per_epoch
    warmup = warmup_steps(total)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # channels_last trains this network about a fifth faster on CPU than the default layout.
        model = OcclusionNet(config.architecture).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        shuffle = torch.Generator().manual_seed(config.seed)
        positive_weight = torch.full((NUM_CELLS,), float(config.positive_weight))
        history, step = [], 0
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            views = training_views(faces, config, epoch)
            batches = shuffled_batches(len(views.images), config.batch_size, shuffle)
            loss_sum, seen = 0.0, 0
            for index in tqdm(batches, desc=f"occlusion estimator epoch {epoch}/{config.epochs}", disable=not progress):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(config.lr, step, warmup, total)
                logits = model(normalize_faces(views.images[index]).to(memory_format=torch.channels_last))
                targets = torch.from_numpy(views.cells[index])
                loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=positive_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(index)
                seen += len(index)
            history.append(
                {"epoch": epoch, "loss": round(loss_sum / seen, 6), "seconds": round(time.perf_counter() - started, 1)}
            )
            if progress:
                print(f"epoch {epoch}/{config.epochs}: BCE {loss_sum / seen:.4f}", flush=True)
    return model.to(memory_format=torch.contiguous_format).eval(), history


def _synthetic(count: int, per_identity: int, seed: int) -> FaceSet:
    faces = SyntheticFaces(count, per_identity, seed)
    images, _ = faces.generate()
    return FaceSet(images, faces.landmarks(), f"synthetic identities (seed {seed}, {count} x {per_identity} images)")


def describe(path: Path) -> str:
    """One line about a written estimator: where, validation F1 and clean false alarms."""
    record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    validation = record["validation"]
    return (
        f"wrote {path} and {path.with_suffix('.json').name}: validation F1 {validation['all']['f1']:.3f}, "
        f"clean faces flagged {100 * validation['clean_false_alarm_rate']:.2f}%"
    )
