"""A bundle on real faces: its decision threshold from real pairs, and what FDM does behind drawn occluders.

Everything runs through the torch-free runtime, as a deployment would. The faces are the registry's
(``pdsn.bench.real_faces``: 10 faces of 8 people), cut as augmented chips with an evaluation seed of
their own, so they share people but no chip with a dictionary learnt on seed 0. Every figure says
how many faces, people and pairs it rests on, because these are few.

- **Threshold.** Cosine scores of every same-person and different-person pair of clean chips; the
  threshold is the midpoint of the widest gap that keeps every different-person pair below it
  (FAR 0 on these pairs) and lets the fewest same-person pairs fall under it. Obama's pairs across his
  three photos are reported apart: they are the only same-person pairs that are not two views of one
  photo.
- **The group photo.** Its six people as the runtime finds them: every different-person score.
- **FDM.** Each face enrolled from one clean chip; probes are other chips behind drawn occluders
  (sunglasses, scarf, hand, face mask, and a patch over a random cell), compared as
  ``Recognizer.verify`` compares (both sides under the probe's cells) with FDM, and without it.
  With ``occlusion="auto"`` too, where the bundle has an occlusion estimator.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pdsn.bench.real_faces import augmented_chips, real_faces
from pdsn.bench.real_photos import group_photo
from pdsn.model.crop_alignment import CROP_ALIGNMENTS
from pdsn.model.grid import NUM_CELLS
from pdsn.runtime.photos import DetectionSettings

EVALUATION_SEED = 20261206
CHIPS_PER_FACE = 8
PROBES_PER_FACE = 10
OCCLUDERS = ("sunglasses", "scarf", "hand", "face_mask", "patch")


@dataclass(frozen=True)
class LabelledChips:
    chips: np.ndarray  # uint8 (N, H, W, 3)
    people: list[str]
    photos: list[str]


def evaluation_chips(recognizer, per_face: int, seed: int) -> LabelledChips:
    """``per_face`` augmented chips of each real face, cut for the bundle's alignment."""
    rng = np.random.default_rng(seed)
    chips, people, photos = [], [], []
    for face in real_faces():
        chips.append(augmented_chips(face, per_face, rng, recognizer.contract.alignment))
        people += [face.person] * per_face
        photos += [face.photo] * per_face
    return LabelledChips(np.concatenate(chips), people, photos)


def threshold_from_pairs(recognizer, seed: int = EVALUATION_SEED) -> dict:
    """The decision threshold from clean real pairs, with its error rates and what it rests on."""
    faces = evaluation_chips(recognizer, CHIPS_PER_FACE, seed)
    scores = _cosines(recognizer.embed(faces.chips))
    same, different, across_photos = [], [], []
    for i, j in itertools.combinations(range(len(faces.people)), 2):
        if faces.people[i] != faces.people[j]:
            different.append(scores[i, j])
            continue
        same.append(scores[i, j])
        if faces.photos[i] != faces.photos[j]:
            across_photos.append(scores[i, j])
    same_array, different_array = np.array(same), np.array(different)
    threshold = _threshold(same_array, different_array)
    return {
        "threshold": round(threshold, 4),
        "far": float((different_array >= threshold).mean()),
        "frr": float((same_array < threshold).mean()),
        "frr_across_photos": float((np.array(across_photos) < threshold).mean()),
        "same_pairs": len(same),
        "same_pairs_across_photos": len(across_photos),
        "different_pairs": len(different),
        "faces": len(set(zip(faces.people, faces.photos))),
        "people": len(set(faces.people)),
        "chips": len(faces.people),
        "same_min": float(same_array.min()),
        "same_mean": float(same_array.mean()),
        "different_max": float(different_array.max()),
        "different_mean": float(different_array.mean()),
        "seed": seed,
    }


def group_photo_pairs(recognizer, min_face: float = 40.0) -> dict:
    """The runtime's scores between the group photo's people (each found face is another person)."""
    found = recognizer.embed(str(group_photo()), detection=DetectionSettings(min_face=min_face))
    scores = _cosines(np.stack([face.embedding for face in found]))
    pairs = [scores[i, j] for i, j in itertools.combinations(range(len(found)), 2)]
    return {"people": len(found), "pairs": len(pairs), "max": float(max(pairs)), "mean": float(np.mean(pairs))}


def fdm_effect(recognizer, seed: int = EVALUATION_SEED + 1) -> dict:
    """Same- and different-person scores of occluded probes against clean enrolments, with FDM and without."""
    from pdsn.train.occlusion import occlude

    rng = np.random.default_rng(seed)
    faces = evaluation_chips(recognizer, PROBES_PER_FACE + 1, seed)
    template = CROP_ALIGNMENTS[recognizer.contract.alignment].template
    enrolled = list(range(0, len(faces.people), PROBES_PER_FACE + 1))
    probes, cells, kinds, owners = [], [], [], []
    for owner, first in enumerate(enrolled):
        for number in range(1, PROBES_PER_FACE + 1):
            kind = OCCLUDERS[(number - 1) % len(OCCLUDERS)]
            cell = int(rng.integers(NUM_CELLS)) if kind == "patch" else None
            landmarks = None if kind == "patch" else template
            drawn = occlude(faces.chips[first + number], kind, rng, cell=cell, landmarks=landmarks)
            probes.append(drawn.image)
            cells.append(drawn.cells)
            kinds.append(kind)
            owners.append(owner)
    probes_array, cells_array = np.stack(probes), np.stack(cells)
    gallery = faces.chips[enrolled]
    plain = _normalised(recognizer.embed(probes_array)) @ _normalised(recognizer.embed(gallery)).T
    with_fdm = _masked_scores(recognizer, probes_array, cells_array, gallery)
    report = {
        "probes": len(probes),
        "faces": len(enrolled),
        "people": len(set(faces.people)),
        "occluders": list(OCCLUDERS),
        "none": _summary(plain, owners, faces, enrolled, kinds),
        "fdm": _summary(with_fdm, owners, faces, enrolled, kinds),
        "seed": seed,
    }
    if recognizer.bundle.manifest.estimator is not None:
        estimated = recognizer.estimate_occlusion(probes_array)
        report["auto"] = _summary(
            _masked_scores(recognizer, probes_array, estimated, gallery), owners, faces, enrolled, kinds
        )
    return report


def estimator_effect(recognizer, seed: int = EVALUATION_SEED + 2) -> dict:
    """The bundle's occlusion estimator on clean chips (how many get any cell flagged) and behind each drawn
    occluder (how many of the covered cells it finds, and how many it flags that are not covered)."""
    from pdsn.train.occlusion import occlude

    rng = np.random.default_rng(seed)
    faces = evaluation_chips(recognizer, CHIPS_PER_FACE, seed)
    template = CROP_ALIGNMENTS[recognizer.contract.alignment].template
    clean = recognizer.estimate_occlusion(faces.chips)
    drawn = [
        occlude(
            chip,
            kind,
            rng,
            cell=int(rng.integers(NUM_CELLS)) if kind == "patch" else None,
            landmarks=None if kind == "patch" else template,
        )
        for chip in faces.chips
        for kind in OCCLUDERS
    ]
    truth = np.stack([d.cells for d in drawn]) > 0.5
    found = recognizer.estimate_occlusion(np.stack([d.image for d in drawn])) > 0.5
    kinds = np.array([d.kind for d in drawn])
    by_kind = {
        kind: float((found & truth)[kinds == kind].sum() / max(truth[kinds == kind].sum(), 1)) for kind in OCCLUDERS
    }
    return {
        "clean_chips": len(faces.chips),
        "faces": len(set(zip(faces.people, faces.photos))),
        "people": len(set(faces.people)),
        "clean_flagged": float((clean > 0.5).any(axis=1).mean()),
        "occluded_chips": len(drawn),
        "covered_cells": int(truth.sum()),
        "recall": float((found & truth).sum() / max(truth.sum(), 1)),
        "precision": float((found & truth).sum() / max(found.sum(), 1)),
        "recall_by_occluder": by_kind,
        "seed": seed,
    }


def _masked_scores(recognizer, probes: np.ndarray, cells: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Each probe against every enrolled face, both under the probe's cells."""
    masked_probes = _normalised(recognizer.embed(probes, occlusion=cells))
    scores = np.empty((len(probes), len(gallery)))
    for row, vector in enumerate(cells):
        enrolled = _normalised(recognizer.embed(gallery, occlusion=np.repeat(vector[None], len(gallery), axis=0)))
        scores[row] = enrolled @ masked_probes[row]
    return scores


def _summary(
    scores: np.ndarray, owners: list[int], faces: LabelledChips, enrolled: list[int], kinds: list[str]
) -> dict:
    people = [faces.people[first] for first in enrolled]
    same = np.array([scores[row, owner] for row, owner in enumerate(owners)])
    different = np.array(
        [
            scores[row, col]
            for row, owner in enumerate(owners)
            for col in range(len(enrolled))
            if people[col] != people[owner]
        ]
    )
    top = [people[int(np.argmax(scores[row]))] == people[owner] for row, owner in enumerate(owners)]
    by_kind = {kind: float(same[[k == kind for k in kinds]].mean()) for kind in OCCLUDERS}
    return {
        "same_mean": float(same.mean()),
        "different_mean": float(different.mean()),
        "different_max": float(different.max()),
        "rank1": float(np.mean(top)),
        "same_by_occluder": by_kind,
    }


def _threshold(same: np.ndarray, different: np.ndarray) -> float:
    """Midway between the highest different-person score and the next same-person score above it."""
    ceiling = float(different.max())
    above = same[same > ceiling]
    return (ceiling + float(above.min())) / 2 if above.size else ceiling + 1e-4


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _cosines(embeddings: np.ndarray) -> np.ndarray:
    unit = _normalised(embeddings)
    return unit @ unit.T
