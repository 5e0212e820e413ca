"""Verification protocols (numpy only): LFW ``pairs.txt``, 10-fold accuracy, TAR at FAR.

``pairs.txt``: a header line, then ``name n1 n2`` for a same-identity pair and
``name1 n1 name2 n2`` for a different pair; image files are ``name/name_NNNN.jpg``. Folds are
contiguous blocks of pairs. For each fold the threshold (cosine, -1..1 in steps of 0.005) that
is best on the other nine folds is applied to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

THRESHOLDS = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.005), 6)


@dataclass(frozen=True)
class Pair:
    first: Path
    second: Path
    same: bool
    line: int


def read_lfw_pairs(pairs_file: str | Path, root: str | Path, extension: str = ".jpg") -> list[Pair]:
    """Parse ``pairs_file``; every referenced image must exist under ``root``."""
    pairs_file, root = Path(pairs_file), Path(root)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file {pairs_file} does not exist")
    lines = pairs_file.read_text(encoding="utf-8").splitlines()
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 3:
                name, a, b = fields
                pair = Pair(_image(root, name, a, extension), _image(root, name, b, extension), True, number)
            elif len(fields) == 4:
                name_a, a, name_b, b = fields
                pair = Pair(_image(root, name_a, a, extension), _image(root, name_b, b, extension), False, number)
            else:
                raise ValueError(f"has {len(fields)} fields, expected 3 (same pair) or 4 (different pair)")
        except ValueError as exc:
            raise ValueError(f"{pairs_file}:{number}: {exc}: {line!r}") from None
        for path in (pair.first, pair.second):
            if not path.is_file():
                raise FileNotFoundError(f"{pairs_file}:{number}: image {path} does not exist")
        pairs.append(pair)
    check_both_kinds(np.array([p.same for p in pairs], dtype=bool), str(pairs_file))
    return pairs


def check_both_kinds(same: np.ndarray, what: str) -> None:
    if same.size == 0:
        raise ValueError(f"{what}: no pairs")
    if same.all() or not same.any():
        kind = "same-identity" if same.all() else "different-identity"
        raise ValueError(f"{what}: all {same.size} pairs are {kind}; verification accuracy needs both kinds")


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> dict:
    """Mean and std of per-fold accuracy with the threshold chosen on the other folds."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {same.shape} must be equal-length vectors")
    check_both_kinds(same, "pairs")
    if len(scores) < folds:
        raise ValueError(f"{len(scores)} pairs cannot be split into {folds} folds")
    fold_of = np.arange(len(scores)) * folds // len(scores)
    # correct[t, i]: pair i is classified correctly at threshold t
    correct = (scores[None, :] > THRESHOLDS[:, None]) == same[None, :]
    accuracies, thresholds = [], []
    for fold in range(folds):
        test = fold_of == fold
        best = int(np.argmax(correct[:, ~test].mean(axis=1)))
        thresholds.append(float(THRESHOLDS[best]))
        accuracies.append(float(correct[best, test].mean()))
    return {
        "accuracy": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
    }


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """True accept rate at the threshold where ``far`` of the different pairs are accepted."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    check_both_kinds(same, "pairs")
    negatives = np.sort(scores[~same])[::-1]
    accepted = int(np.floor(far * len(negatives)))
    threshold = negatives[accepted] if accepted < len(negatives) else -np.inf
    return float((scores[same] > threshold).mean())


def _image(root: Path, name: str, number: str, extension: str) -> Path:
    if not number.isdigit():
        raise ValueError(f"image number {number!r} is not a number")
    return root / name / f"{name}_{int(number):04d}{extension}"
