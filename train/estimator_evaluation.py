"""How good the occlusion estimator is: cell metrics, and what its cells do for recognition.

Cell level: precision, recall and F1 over every (face, cell) decision against the coverage rule's
labels, per occluder kind, and the share of clean faces with any cell flagged (a false alarm
discards features for nothing).

Recognition, with a PyTorch model and its mask dictionary, three ways: no FDM, FDM from the
estimator's cells, FDM from the true cells (the oracle; what an external detector that is always
right would give). Verification follows ``pdsn.train.evaluate``'s protocols on held-out SYNTHETIC
identities: the occluded protocol (second image occluded) once with the four published occluder
kinds and once with all six, and the clean protocol. Both faces of a pair are estimated and the
union of their cells masks both, as deployed; the oracle knows the clean first image has none.
Identification (``pdsn.train.identification``): rank-1 with every probe occluded by one of the six
kinds; the probe's cells mask probe and gallery (the gallery is enrolled clean, so its faces are not
estimated). The headline is the share of the oracle's gain over no FDM that the estimator recovers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pdsn.model.grid import NUM_CELLS
from pdsn.model.protocols import ten_fold_accuracy
from pdsn.train.evaluate import (
    EVAL_IDENTITIES,
    EVAL_IMAGES_PER_IDENTITY,
    EVAL_PAIRS,
    EVAL_SEED,
    FOLDS,
    Embedder,
    cosine_scores,
    occlude_seconds,
    synthetic_pairs,
)
from pdsn.train.identification import (
    IDENTIFICATION_SEED,
    brute_force_scores,
    identification_metrics,
    synthetic_identification,
)
from pdsn.train.occlusion import ESTIMATOR_OCCLUDER_KINDS, OCCLUDER_KINDS

# Verification ways and the occluded protocols they are measured on.
WAYS = ("none", "estimator", "oracle")
OCCLUDED_PROTOCOLS = {
    "occluded (4 published kinds)": OCCLUDER_KINDS,
    "occluded (all 6 kinds)": ESTIMATOR_OCCLUDER_KINDS,
}
CLEAN_PROTOCOL = "clean"
# The goals on held-out synthetic occluders with the demo model.
GOAL_ORACLE_GAIN_FRACTION = 0.8
GOAL_MAX_CLEAN_COST = 0.005
GOAL_CLEAN_UNFLAGGED = 0.95


class CellEstimator(Protocol):
    name: str

    def predict_cells(self, images: np.ndarray) -> np.ndarray: ...


def cell_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 over every (face, cell) decision of two (N, 25) 0/1 arrays."""
    predicted, truth = np.asarray(predicted) > 0.5, np.asarray(truth) > 0.5
    if predicted.shape != truth.shape or predicted.ndim != 2 or predicted.shape[1] != NUM_CELLS:
        raise ValueError(
            f"predicted and truth must both be (N, {NUM_CELLS}) cell vectors, got {predicted.shape} and {truth.shape}"
        )
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "faces": len(truth),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positive": tp,
        "false_positive": fp,
        "false_negative": fn,
        "exact_faces": float((predicted == truth).all(axis=1).mean()) if len(truth) else 1.0,
    }


def false_alarm_rate(predicted_clean: np.ndarray) -> float:
    """The share of clean faces with at least one cell flagged."""
    return float((np.asarray(predicted_clean) > 0.5).any(axis=1).mean())


def cell_report(predicted: np.ndarray, truth: np.ndarray, kinds: Sequence[str], predicted_clean: np.ndarray) -> dict:
    """Cell scores over all occluded faces and per kind, and the clean false-alarm rate."""
    kinds = np.asarray(kinds)
    return {
        "all": cell_scores(predicted, truth),
        "per_kind": {
            str(kind): cell_scores(predicted[kinds == kind], truth[kinds == kind]) for kind in np.unique(kinds)
        },
        "clean_faces": len(predicted_clean),
        "clean_false_alarm_rate": false_alarm_rate(predicted_clean),
    }


def evaluate_estimator(
    estimator: CellEstimator,
    embedder: Embedder,
    num_pairs: int = EVAL_PAIRS,
    seed: int = EVAL_SEED,
    identities: int = EVAL_IDENTITIES,
    identification: bool = True,
) -> dict:
    """The cell, verification and identification evaluation (see the module doc), as a JSON-able dict."""
    pairs = synthetic_pairs(num_pairs, seed, identities, EVAL_IMAGES_PER_IDENTITY)
    clean_cells = estimator.predict_cells(pairs.images)
    zero_pairs = np.zeros((len(pairs), NUM_CELLS), dtype=np.float32)
    first_plain = embedder.embed(pairs.images[pairs.first], zero_pairs)

    def accuracy(a: np.ndarray, b: np.ndarray) -> dict:
        result = ten_fold_accuracy(cosine_scores(a, b), pairs.same, FOLDS)
        return {"accuracy": result["accuracy"], "std": result["std"]}

    def three_ways(second: np.ndarray, true_cells: np.ndarray, estimated_second: np.ndarray) -> dict:
        estimated = np.maximum(clean_cells[pairs.first], estimated_second)
        rows = {}
        for way, cells in (("none", zero_pairs), ("estimator", estimated), ("oracle", true_cells)):
            first = first_plain if not cells.any() else embedder.embed(pairs.images[pairs.first], cells)
            rows[way] = accuracy(first, embedder.embed(second, cells))
        rows["estimator_pairs_with_cells"] = float(estimated.any(axis=1).mean())
        return rows

    verification = {CLEAN_PROTOCOL: three_ways(pairs.images[pairs.second], zero_pairs, clean_cells[pairs.second])}
    occluded_faces = []
    for protocol, kinds in OCCLUDED_PROTOCOLS.items():
        occluded = occlude_seconds(pairs, seed, kinds)
        estimated = estimator.predict_cells(occluded.images)
        verification[protocol] = three_ways(occluded.images, occluded.occlusion, estimated)
        if kinds == ESTIMATOR_OCCLUDER_KINDS:
            occluded_faces.append((estimated, occluded.occlusion, occluded.kinds))
    report = {
        "estimator": estimator.name,
        "recognition": embedder.name,
        "pairs": {"count": len(pairs), "source": pairs.source, "seed": seed, "folds": FOLDS},
        "verification": verification,
    }
    clean_flags = [clean_cells]
    if identification:
        data = synthetic_identification(seed=IDENTIFICATION_SEED, kinds=ESTIMATOR_OCCLUDER_KINDS)
        estimated = estimator.predict_cells(data.probes)
        scored = {
            "none": brute_force_scores(embedder, data, fdm=False),
            "estimator": brute_force_scores(embedder, dataclasses.replace(data, probe_cells=estimated), fdm=True),
            "oracle": brute_force_scores(embedder, data, fdm=True),
        }
        report["identification"] = {
            "data": data.describe(),
            **{way: identification_metrics(scores, data, (0.1, 0.01)) for way, scores in scored.items()},
        }
        occluded_faces.append((estimated, data.probe_cells, data.probe_kinds))
        clean_flags.append(estimator.predict_cells(data.gallery))
    predicted, truth, kinds = (np.concatenate(parts) for parts in zip(*occluded_faces))
    report["cells"] = cell_report(predicted, truth, kinds, np.concatenate(clean_flags))
    report["cells"]["source"] = (
        "the occluded second images of the all-6-kinds protocol"
        + (" and the identification probes; clean: every pair image and gallery face" if identification else "")
        + " (SYNTHETIC identities and occluder draws no training step saw)"
    )
    report["gains"] = oracle_gain_fractions(report)
    report["goals"] = goals(report)
    return report


def oracle_gain_fractions(report: dict) -> dict:
    """(estimator - none) / (oracle - none) per occluded protocol and for identification rank-1."""

    def fraction(none: float, estimator: float, oracle: float) -> dict:
        gain = oracle - none
        return {
            "none": none,
            "estimator": estimator,
            "oracle": oracle,
            "oracle_gain": gain,
            "fraction_recovered": (estimator - none) / gain if gain > 0 else None,
        }

    gains = {
        protocol: fraction(*(rows[way]["accuracy"] for way in WAYS))
        for protocol, rows in report["verification"].items()
        if protocol != CLEAN_PROTOCOL
    }
    if "identification" in report:
        gains["identification rank-1"] = fraction(*(report["identification"][way]["rank1"] for way in WAYS))
    return gains


def goals(report: dict) -> dict:
    """Each of the issue's three goals with the measured value and whether it is met."""
    clean = report["verification"][CLEAN_PROTOCOL]
    cost = clean["none"]["accuracy"] - clean["estimator"]["accuracy"]
    unflagged = 1.0 - report["cells"]["clean_false_alarm_rate"]
    result = {
        "clean_accuracy_cost": {"value": cost, "goal": f"<= {GOAL_MAX_CLEAN_COST}", "met": cost <= GOAL_MAX_CLEAN_COST},
        "clean_faces_unflagged": {
            "value": unflagged,
            "goal": f">= {GOAL_CLEAN_UNFLAGGED}",
            "met": unflagged >= GOAL_CLEAN_UNFLAGGED,
        },
    }
    for protocol, gain in report["gains"].items():
        recovered = gain["fraction_recovered"]
        result[f"oracle_gain_recovered: {protocol}"] = {
            "value": recovered,
            "goal": f">= {GOAL_ORACLE_GAIN_FRACTION}",
            "met": recovered is not None and recovered >= GOAL_ORACLE_GAIN_FRACTION,
        }
    return result


def format_report(report: dict) -> str:
    """The report as Markdown tables."""
    cells = report["cells"]
    lines = [
        f"Estimator: {report['estimator']}; recognition: {report['recognition']}; "
        f"{report['pairs']['count']} pairs from {report['pairs']['source']}.",
        "",
        "Three ways to choose the FDM: none; the estimator's cells (both faces of a pair estimated, the union "
        "masks both); the occluder's true cells by the coverage rule (the oracle). Identification masks probe "
        "and gallery with the probe's cells; the gallery is enrolled clean and not estimated.",
        "",
        f"### Cells ({cells['source']})",
        "",
        "| occluder | faces | precision | recall | F1 | faces exactly right |",
        "|---|---|---|---|---|---|",
    ]
    for kind, scores in [*cells["per_kind"].items(), ("all kinds", cells["all"])]:
        lines.append(
            f"| {kind} | {scores['faces']} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
            f"{scores['f1']:.3f} | {100 * scores['exact_faces']:.1f}% |"
        )
    lines += [
        "",
        f"Clean faces with any cell flagged: {100 * cells['clean_false_alarm_rate']:.2f}% of {cells['clean_faces']}.",
        "",
        "### Verification (10-fold accuracy)",
        "",
        "| protocol | no FDM | FDM from the estimator | FDM from the true cells (oracle) | pairs the estimator masks |",
        "|---|---|---|---|---|",
    ]
    for protocol, rows in report["verification"].items():
        accuracies = " | ".join(f"{100 * rows[w]['accuracy']:.2f}% ± {100 * rows[w]['std']:.2f}" for w in WAYS)
        lines.append(f"| {protocol} | {accuracies} | {100 * rows['estimator_pairs_with_cells']:.1f}% |")
    if "identification" in report:
        ident = report["identification"]
        lines += [
            "",
            f"### Identification ({ident['data']['gallery']} gallery identities, {ident['data']['mated_probes']} "
            "mated probes, every probe occluded)",
            "",
            "| | no FDM | FDM from the estimator | FDM from the true cells (oracle) |",
            "|---|---|---|---|",
            "| rank-1 | " + " | ".join(f"{100 * ident[w]['rank1']:.2f}%" for w in WAYS) + " |",
        ]
    lines += ["", "### Share of the oracle's gain recovered", "", "| | none | estimator | oracle | recovered |"]
    lines.append("|---|---|---|---|---|")
    for name, gain in report["gains"].items():
        recovered = "n/a" if gain["fraction_recovered"] is None else f"{100 * gain['fraction_recovered']:.0f}%"
        lines.append(
            f"| {name} | {100 * gain['none']:.2f}% | {100 * gain['estimator']:.2f}% | {100 * gain['oracle']:.2f}% "
            f"| {recovered} |"
        )
    lines += ["", "### Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for name, goal in report["goals"].items():
        value = "n/a" if goal["value"] is None else f"{goal['value']:.4f}"
        lines.append(f"| {name} | {value} | {goal['goal']} | {'yes' if goal['met'] else 'no'} |")
    return "\n".join(lines)
