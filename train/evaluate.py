"""Verification accuracy on the paper's protocols, with and without FDM, on PyTorch or a bundle.

Pairs come from an LFW ``pairs.txt`` over a folder of aligned crops, or are drawn from SYNTHETIC
identities that no training step saw (LFW's layout: 10 folds, each half same, half different).

- clean: both images as they are; 10-fold accuracy (cosine, thresholds -1..1 step 0.005, chosen on
  nine folds, tested on the tenth) and TAR at the given FARs.
- occluded: the second image of every pair gets a seeded synthetic occluder; without FDM both are
  embedded plainly, with FDM the occluded image's FDM (its covered cells) is applied to both.

An embedder is anything with ``name`` and ``embed(images uint8 NHWC, occlusion (N, 25))``:
``TorchEmbedder`` (a PyTorch model and a mask dictionary) or ``BundleEmbedder`` (a runtime
``Recognizer``, on any backend and precision), so one table compares FP32, FP16 and INT8.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pdsn.model.dictionary import MaskDictionary
from pdsn.model.grid import NUM_CELLS
from pdsn.model.protocols import check_both_kinds, read_lfw_pairs, tar_at_far, ten_fold_accuracy
from pdsn.train.data import read_face
from pdsn.train.occlusion import OCCLUDER_KINDS, random_occlusion
from pdsn.train.synthetic import SyntheticFaces

FOLDS = 10
DEFAULT_FARS = (0.1, 0.01)
# Synthetic evaluation identities are drawn from this seed, apart from any training seed.
EVAL_SEED = 10_000
EVAL_IDENTITIES = 100
EVAL_IMAGES_PER_IDENTITY = 6
EVAL_PAIRS = 600
# Random stream tags of the pair draw and of the occluders (see pdsn.train.data).
_PAIR_STREAM = 3
_OCCLUDER_STREAM = 4


class Embedder(Protocol):
    name: str

    def embed(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PairSet:
    """Pairs over a set of images: ``first``/``second`` index ``images``; ``same`` per pair."""

    images: np.ndarray
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.same)


@dataclass(frozen=True)
class OccludedSeconds:
    """The occluded second image of every pair and its occluded cells, (P, 25)."""

    images: np.ndarray
    occlusion: np.ndarray
    kinds: tuple[str, ...]
    seed: int


def synthetic_pairs(
    num_pairs: int = EVAL_PAIRS,
    seed: int = EVAL_SEED,
    num_identities: int = EVAL_IDENTITIES,
    images_per_identity: int = EVAL_IMAGES_PER_IDENTITY,
) -> PairSet:
    """LFW-like pairs of SYNTHETIC identities: 10 folds, each half same, half different pairs."""
    if num_pairs < 2 * FOLDS or num_pairs % (2 * FOLDS):
        raise ValueError(
            f"num_pairs must be a positive multiple of {2 * FOLDS} (10 folds of equal same and "
            f"different halves), got {num_pairs}"
        )
    if num_identities < 2 or images_per_identity < 2:
        raise ValueError(
            "synthetic pairs need >= 2 identities with >= 2 images each (same and different "
            f"pairs), got {num_identities} x {images_per_identity}"
        )
    images, _ = SyntheticFaces(num_identities, images_per_identity, seed).generate()
    rng = np.random.default_rng([seed, _PAIR_STREAM])
    per_half = num_pairs // (2 * FOLDS)
    first, second, same = [], [], []
    for _ in range(FOLDS):
        for is_same in (True, False):
            for _ in range(per_half):
                if is_same:
                    identity = int(rng.integers(num_identities))
                    a, b = rng.choice(images_per_identity, size=2, replace=False)
                    first.append(identity * images_per_identity + int(a))
                    second.append(identity * images_per_identity + int(b))
                else:
                    i, j = rng.choice(num_identities, size=2, replace=False)
                    first.append(int(i) * images_per_identity + int(rng.integers(images_per_identity)))
                    second.append(int(j) * images_per_identity + int(rng.integers(images_per_identity)))
                same.append(is_same)
    return PairSet(
        images,
        np.asarray(first),
        np.asarray(second),
        np.asarray(same, dtype=bool),
        f"synthetic pairs (seed {seed}, {num_identities} identities x {images_per_identity} images)",
    )


def lfw_pairs(pairs_file: str | Path, root: str | Path, extension: str = ".jpg") -> PairSet:
    """Pairs of an LFW ``pairs.txt`` over ``root/name/name_NNNN<extension>`` aligned crops."""
    pairs = read_lfw_pairs(pairs_file, root, extension)
    index: dict[Path, int] = {}
    for pair in pairs:
        for path in (pair.first, pair.second):
            index.setdefault(path, len(index))
    images = np.stack([read_face(path) for path in index])
    return PairSet(
        images,
        np.asarray([index[p.first] for p in pairs]),
        np.asarray([index[p.second] for p in pairs]),
        np.asarray([p.same for p in pairs], dtype=bool),
        f"{pairs_file} over {root}",
    )


def occlude_seconds(pairs: PairSet, seed: int = EVAL_SEED, kinds: tuple[str, ...] = OCCLUDER_KINDS) -> OccludedSeconds:
    """A seeded occluder on the second image of each pair, drawn independently per pair."""
    occlusions = [
        random_occlusion(pairs.images[index], np.random.default_rng([seed, _OCCLUDER_STREAM, k]), kinds)
        for k, index in enumerate(pairs.second)
    ]
    return OccludedSeconds(
        np.stack([o.image for o in occlusions]),
        np.stack([o.cells for o in occlusions]).astype(np.float32),
        tuple(o.kind for o in occlusions),
        seed,
    )


def evaluate_embedder(
    embedder: Embedder,
    pairs: PairSet,
    occluded: OccludedSeconds,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> list[dict]:
    """Rows for the clean protocol and the occluded protocol without and with FDM."""
    check_both_kinds(pairs.same, pairs.source)
    none = np.zeros((len(pairs.images), NUM_CELLS), dtype=np.float32)
    plain = embedder.embed(pairs.images, none)
    occluded_plain = embedder.embed(occluded.images, np.zeros_like(occluded.occlusion))
    first_masked = embedder.embed(pairs.images[pairs.first], occluded.occlusion)
    occluded_masked = embedder.embed(occluded.images, occluded.occlusion)
    scored = [
        ("clean", None, plain[pairs.first], plain[pairs.second]),
        ("occluded", False, plain[pairs.first], occluded_plain),
        ("occluded", True, first_masked, occluded_masked),
    ]
    rows = []
    for protocol, fdm, a, b in scored:
        scores = cosine_scores(a, b)
        accuracy = ten_fold_accuracy(scores, pairs.same, FOLDS)
        rows.append(
            {
                "model": embedder.name,
                "protocol": protocol,
                "fdm": fdm,
                "accuracy": accuracy["accuracy"],
                "std": accuracy["std"],
                "thresholds": accuracy["thresholds"],
                "tar_at_far": {str(far): tar_at_far(scores, pairs.same, far) for far in fars},
            }
        )
    return rows


def evaluation_report(
    embedders: list[Embedder],
    pairs: PairSet,
    occluded: OccludedSeconds,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> dict:
    """Every embedder's rows plus what was evaluated on (JSON-serialisable)."""
    rows = [row for embedder in embedders for row in evaluate_embedder(embedder, pairs, occluded, fars)]
    covered = occluded.occlusion.sum(axis=1)
    return {
        "pairs": {
            "source": pairs.source,
            "count": len(pairs),
            "same": int(pairs.same.sum()),
            "different": int((~pairs.same).sum()),
            "folds": FOLDS,
        },
        "occlusion": {
            "protocol": "second image of every pair occluded; with FDM its FDM is applied to both",
            "seed": occluded.seed,
            "kinds": dict(sorted(Counter(occluded.kinds).items())),
            "mean_occluded_cells": float(covered.mean()),
            "pairs_without_occluded_cell": int((covered == 0).sum()),
        },
        "fars": list(fars),
        "rows": rows,
    }


def format_table(report: dict) -> str:
    """The report's rows as a Markdown table."""
    fars = report["fars"]
    header = ["model", "protocol", "FDM", "accuracy (10-fold)", *(f"TAR@FAR={far:g}" for far in fars)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        fdm = {None: "n/a (no occluded cell)", False: "off", True: "on"}[row["fdm"]]
        cells = [
            row["model"],
            row["protocol"],
            fdm,
            f"{100 * row['accuracy']:.2f}% ± {100 * row['std']:.2f}",
            *(f"{100 * row['tar_at_far'][str(far)]:.2f}%" for far in fars),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    report: dict, json_path: str | Path, markdown_path: str | Path | None = None, preface: str = ""
) -> None:
    """The report as JSON and, when ``markdown_path`` is given, as Markdown after ``preface``."""
    Path(json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if markdown_path is not None:
        pairs, occlusion = report["pairs"], report["occlusion"]
        heading = "\n## Verification accuracy" if preface else "# Verification accuracy"
        text = preface + (
            f"{heading}\n\n{pairs['count']} pairs ({pairs['same']} same, "
            f"{pairs['different']} different, {pairs['folds']} folds) from {pairs['source']}. "
            f"Occluded protocol: {occlusion['protocol']} (occluders {occlusion['kinds']}, seed "
            f"{occlusion['seed']}).\n\n{format_table(report)}\n"
        )
        Path(markdown_path).write_text(text, encoding="utf-8")


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("nd,nd->n", a, b) / norms


class TorchEmbedder:
    """A PyTorch recognition model; occluded cells select FDMs from ``dictionary``."""

    def __init__(
        self, model, dictionary: MaskDictionary | None, name: str = "pytorch fp32", batch_size: int = 64
    ) -> None:
        if dictionary is not None:
            from pdsn.train.stage2 import check_dictionary_fits

            check_dictionary_fits(dictionary, model)
        self.model, self.dictionary, self.name, self.batch_size = model.eval(), dictionary, name, batch_size

    def embed(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        import torch

        from pdsn.model.network import normalize_faces

        if occlusion.any() and self.dictionary is None:
            raise ValueError("occluded cells were given but no mask dictionary; pass --dictionary")
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                features = self.model.features(normalize_faces(images[start : start + self.batch_size]))
                cells = occlusion[start : start + self.batch_size]
                if cells.any():
                    features = features * torch.from_numpy(self.dictionary.combine(cells))  # type: ignore[union-attr]
                out.append(self.model.head(features).numpy())
        return np.concatenate(out)


class BundleEmbedder:
    """A runtime ``Recognizer`` (any backend and precision); close it when done."""

    def __init__(self, recognizer, name: str) -> None:
        self.recognizer, self.name = recognizer, name

    @classmethod
    def open(
        cls,
        bundle: str | Path,
        backend: str,
        precision: str,
        device: str = "cpu",
        allow_ungated: bool = False,
    ) -> BundleEmbedder:
        from pdsn.runtime import Recognizer

        recognizer = Recognizer.open(
            bundle, backend=backend, device=device, precision=precision, allow_ungated=allow_ungated
        )
        info = recognizer.backend_info
        return cls(recognizer, f"{info.get('backend', backend)} {recognizer.precision}")

    def embed(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        contract = self.recognizer.contract
        if contract.image_layout == "nchw-float32":
            norm = contract.normalization
            scaled = (images.astype(np.float32) / norm["scale"] - norm["mean"]) / norm["std"]
            images = np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
        return self.recognizer.embed(images, occlusion=occlusion)

    def close(self) -> None:
        self.recognizer.close()
