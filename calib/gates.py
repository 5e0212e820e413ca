"""Parity of a precision variant against the FP32 model on held-out faces, and its gate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pdsn.calib.data import FaceSet
from pdsn.model.comparison import PARITY_PATTERNS, compare_embeddings, occlusion_batch
from pdsn.model.protocols import Pair, ten_fold_accuracy

Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PrecisionGate:
    """Thresholds on the cosine similarity to FP32 over all held-out rows; None = not checked."""

    min_cosine: float | None = None
    mean_cosine: float | None = None
    p1_cosine: float | None = None

    def failures(self, overall: dict) -> list[str]:
        checks = (
            ("min", self.min_cosine, "cosine_min"),
            ("mean", self.mean_cosine, "cosine_mean"),
            ("p1", self.p1_cosine, "cosine_p1"),
        )
        return [
            f"cosine {name} {overall[key]:.5f} < {limit}"
            for name, limit, key in checks
            if limit is not None and overall[key] < limit
        ]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


DEFAULT_GATES = {
    "fp16": PrecisionGate(min_cosine=0.9995),
    "int8": PrecisionGate(mean_cosine=0.99, p1_cosine=0.98),
}


def variant_parity(reference: Embed, candidate: Embed, holdout: FaceSet, gate: PrecisionGate) -> dict:
    """Compare on every parity pattern and on the held-out set's own occlusion mix."""
    cases = {name: occlusion_batch(cells, len(holdout)) for name, cells in PARITY_PATTERNS.items()}
    cases["traffic-mix"] = holdout.occlusion
    patterns, all_reference, all_candidate = {}, [], []
    for name, occlusion in cases.items():
        expected, got = reference(holdout.images, occlusion), candidate(holdout.images, occlusion)
        patterns[name] = compare_embeddings(expected, got)
        all_reference.append(expected)
        all_candidate.append(got)
    overall = compare_embeddings(np.concatenate(all_reference), np.concatenate(all_candidate))
    failures = gate.failures(overall)
    return {
        "holdout": holdout.describe(),
        "gate": gate.to_dict(),
        "patterns": patterns,
        "overall": overall,
        "passed": not failures,
        "failures": failures,
    }


def pairs_accuracy_change(reference: Embed, candidate: Embed, pairs: list[Pair], load_image) -> dict:
    """10-fold verification accuracy of FP32 and of the variant on the same clean pairs."""
    firsts = np.stack([load_image(p.first) for p in pairs])
    seconds = np.stack([load_image(p.second) for p in pairs])
    same = np.array([p.same for p in pairs])
    none = np.zeros((len(pairs), 25), np.float32)
    result = {}
    for name, embed in (("fp32", reference), ("variant", candidate)):
        a, b = embed(firsts, none), embed(seconds, none)
        scores = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        result[f"{name}_accuracy"] = ten_fold_accuracy(scores, same)["accuracy"]
    result["accuracy_change"] = result["variant_accuracy"] - result["fp32_accuracy"]
    result["pairs"] = len(pairs)
    return result


def format_variant_table(rows: dict[str, dict]) -> str:
    """One line per variant (keyed by a label such as 'int8 on onnxruntime')."""
    lines = [f"{'variant':<28} {'cos min':>9} {'cos mean':>9} {'cos p1':>9} {'max |err|':>10}  gate"]
    for label, report in rows.items():
        o = report["overall"]
        verdict = "pass" if report["passed"] else "FAIL: " + "; ".join(report["failures"])
        lines.append(
            f"{label:<28} {o['cosine_min']:>9.5f} {o['cosine_mean']:>9.5f} {o['cosine_p1']:>9.5f} "
            f"{o['max_abs_error']:>10.2e}  {verdict}"
        )
    return "\n".join(lines)
