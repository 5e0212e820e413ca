"""1:N identification under the PDSN protocol: closed-set rank-1 and open-set TPIR at FPIR.

The gallery holds one clean image of each enrolled identity plus distractor identities that have
no probe. Probes are other images, each behind a seeded occluder: mated probes of enrolled
identities, and non-mated probes of identities never enrolled. With FDM the probe's occluded
cells mask both the probe and every gallery face (the union rule; gallery faces are clean), so
the gallery's embeddings depend on the probe's pattern; without FDM nothing is masked.

Any ``Embedder`` (PyTorch, or a bundle through the runtime) is scored the brute-force way: per
distinct probe pattern, the whole gallery is embedded under it. A bundle is also scored through
``pdsn.runtime.gallery.Gallery`` (trunk once per face, head per pattern), the deployed path; the
two must agree.

Rank-1: the fraction of mated probes whose best-scoring gallery identity is theirs. TPIR at FPIR
f: the threshold accepts a fraction f of the non-mated probes' best scores; TPIR is the fraction
of mated probes whose best match is theirs and scores above it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.train.evaluate import Embedder
from pdsn.train.occlusion import OCCLUDER_KINDS, random_occlusion
from pdsn.train.synthetic import SyntheticFaces

IDENTIFICATION_SEED = 20_000
DEFAULT_FPIRS = (0.1, 0.01)
_OCCLUDER_STREAM = 5


@dataclass(frozen=True)
class IdentificationSet:
    gallery: np.ndarray  # uint8 (G, 112, 96, 3): one clean image per gallery identity
    gallery_labels: np.ndarray  # int64 (G,)
    probes: np.ndarray  # uint8 (P, 112, 96, 3), occluded
    probe_labels: np.ndarray  # int64 (P,), -1 for non-mated probes
    probe_cells: np.ndarray  # float32 (P, 25)
    probe_kinds: tuple[str, ...]
    enrolled: int
    distractors: int
    seed: int

    def describe(self) -> dict:
        mated = self.probe_labels >= 0
        return {
            "source": f"synthetic identities (seed {self.seed})",
            "gallery": len(self.gallery),
            "enrolled_with_probes": self.enrolled,
            "distractors": self.distractors,
            "mated_probes": int(mated.sum()),
            "non_mated_probes": int((~mated).sum()),
            "occluders": dict(sorted(Counter(self.probe_kinds).items())),
            "mean_occluded_cells": float(self.probe_cells.sum(axis=1).mean()),
        }


def synthetic_identification(
    enrolled: int = 100,
    distractors: int = 100,
    unenrolled: int = 50,
    probes_per_identity: int = 2,
    seed: int = IDENTIFICATION_SEED,
    kinds: tuple[str, ...] = OCCLUDER_KINDS,
) -> IdentificationSet:
    """Seeded SYNTHETIC identities: enrolled (with probes), distractors (gallery only), unenrolled (probes only)."""
    for name, value in (
        ("enrolled", enrolled),
        ("unenrolled", unenrolled),
        ("probes_per_identity", probes_per_identity),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be a whole number >= 0, got {distractors!r}")
    per = 1 + probes_per_identity
    total = enrolled + distractors + unenrolled
    images, _ = SyntheticFaces(total, per, seed=seed).generate()
    images = images.reshape(total, per, *images.shape[1:])
    in_gallery = np.arange(enrolled + distractors)
    mated = np.arange(enrolled)
    outsiders = np.arange(enrolled + distractors, total)
    probe_ids = np.concatenate([np.repeat(mated, probes_per_identity), np.repeat(outsiders, probes_per_identity)])
    probe_images = np.concatenate(
        [images[mated, 1:].reshape(-1, *images.shape[2:]), images[outsiders, 1:].reshape(-1, *images.shape[2:])]
    )
    occlusions = [
        random_occlusion(image, np.random.default_rng([seed, _OCCLUDER_STREAM, k]), kinds)
        for k, image in enumerate(probe_images)
    ]
    return IdentificationSet(
        gallery=images[in_gallery, 0],
        gallery_labels=in_gallery.astype(np.int64),
        probes=np.stack([o.image for o in occlusions]),
        probe_labels=np.where(probe_ids < enrolled, probe_ids, -1).astype(np.int64),
        probe_cells=np.stack([o.cells for o in occlusions]).astype(np.float32),
        probe_kinds=tuple(o.kind for o in occlusions),
        enrolled=enrolled,
        distractors=distractors,
        seed=seed,
    )


def brute_force_scores(embedder: Embedder, data: IdentificationSet, fdm: bool) -> np.ndarray:
    """Cosine scores (P, G): per distinct probe pattern, the gallery embedded under it."""
    cells = data.probe_cells if fdm else np.zeros_like(data.probe_cells)
    scores = np.empty((len(data.probes), len(data.gallery)), dtype=np.float64)
    patterns, inverse = np.unique(cells, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse.reshape(-1) == index)
        gallery = _unit(embedder.embed(data.gallery, np.repeat(pattern[None], len(data.gallery), axis=0)))
        probes = _unit(embedder.embed(data.probes[rows], cells[rows]))
        scores[rows] = probes @ gallery.T
    return scores


def gallery_scores(recognizer, data: IdentificationSet, fdm: bool, path: str | Path) -> np.ndarray:
    """Cosine scores (P, G) through ``Gallery``: the deployed path (features once, head per pattern)."""
    from pdsn.runtime.gallery import Gallery

    Path(path).unlink(missing_ok=True)
    cells = data.probe_cells if fdm else np.zeros_like(data.probe_cells)
    with Gallery.open(path, recognizer, feature_dtype="float32") as gallery:
        features = recognizer.features(data.gallery)
        for label, row in zip(data.gallery_labels, features):
            gallery.enroll_features(str(int(label)), row[None])
        results = gallery.identify_features(recognizer.features(data.probes), cells, k=len(data.gallery))
    scores = np.full((len(data.probes), len(data.gallery)), -np.inf)
    for row, result in enumerate(results):
        for match in result.matches:
            scores[row, int(match.identity)] = match.score
    return scores


def identification_metrics(scores: np.ndarray, data: IdentificationSet, fpirs: tuple[float, ...]) -> dict:
    """Rank-1 over mated probes; TPIR at each FPIR over the non-mated probes' best scores."""
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(len(scores)), best]
    mated = data.probe_labels >= 0
    hit = data.gallery_labels[best] == data.probe_labels
    result = {"rank1": float(hit[mated].mean()), "tpir_at_fpir": {}}
    non_mated = np.sort(top[~mated])[::-1]
    for fpir in fpirs:
        if not 0.0 < fpir < 1.0:
            raise ValueError(f"fpir must be in (0, 1), got {fpir}")
        accepted = int(np.floor(fpir * len(non_mated)))
        threshold = non_mated[accepted] if accepted < len(non_mated) else -np.inf
        result["tpir_at_fpir"][str(fpir)] = float((hit & (top > threshold))[mated].mean())
    return result


def identification_report(
    rows: list[tuple[str, str, bool, np.ndarray]], data: IdentificationSet, fpirs: tuple[float, ...] = DEFAULT_FPIRS
) -> dict:
    """``rows``: (model, path, fdm, scores) each -> the report's metric rows."""
    return {
        "data": data.describe(),
        "protocol": "one clean gallery image per identity; every probe occluded; with FDM the probe's cells mask "
        "both sides",
        "fpirs": list(fpirs),
        "rows": [
            {"model": model, "path": path, "fdm": fdm, **identification_metrics(scores, data, fpirs)}
            for model, path, fdm, scores in rows
        ],
    }


def format_identification_table(report: dict) -> str:
    fpirs = report["fpirs"]
    header = ["model", "scored by", "FDM", "rank-1", *(f"TPIR@FPIR={f:g}" for f in fpirs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = [
            row["model"],
            row["path"],
            "on" if row["fdm"] else "off",
            f"{100 * row['rank1']:.2f}%",
            *(f"{100 * row['tpir_at_fpir'][str(f)]:.2f}%" for f in fpirs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = embeddings.astype(np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
