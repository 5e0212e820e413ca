"""``pdsn evaluate-real``: a checkpoint and dictionary measured on real faces.

Exports them into a bundle (in ``work``), then measures through the runtime
(``pdsn.bench.real_occlusion``): the decision threshold from real pairs, the group photo's
different-person scores against it, and FDM's effect behind drawn occluders. Writes
``evaluation.json`` and ``evaluation.md`` into ``out``; the threshold is what ``pdsn export`` puts in
the bundle as its decision threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

from pdsn.bench.machine import describe_machine

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"


def measure(bundle: Path) -> dict:
    from pdsn.bench.real_occlusion import estimator_effect, fdm_effect, group_photo_pairs, threshold_from_pairs
    from pdsn.runtime import Recognizer

    with Recognizer.open(bundle, backend="onnxruntime") as recognizer:
        report = {
            "decision": threshold_from_pairs(recognizer),
            "group_photo": group_photo_pairs(recognizer),
            "fdm": fdm_effect(recognizer),
        }
        if recognizer.bundle.manifest.estimator is not None:
            report["estimator"] = estimator_effect(recognizer)
        return report


def markdown(report: dict) -> str:
    decision, group, fdm = report["decision"], report["group_photo"], report["fdm"]
    lines = [
        "# dlib's face ResNet with its PDSN dictionary, on real faces",
        "",
        f"Measured by `scripts/dlib-default-model.sh` on {report['machine']['cpu']} ({report['machine']['cores']} cores). "
        f"Every figure rests on "
        f"the registry's real photos: {decision['faces']} faces of {decision['people']} people (few).",
        "",
        "## Decision threshold (cosine)",
        "",
        f"**{decision['threshold']}**, midway between the highest different-person score and the next "
        f"same-person score, on {decision['chips']} clean augmented chips: {decision['same_pairs']} "
        f"same-person pairs ({decision['same_pairs_across_photos']} of them across Obama's three photos) "
        f"and {decision['different_pairs']} different-person pairs. FAR {decision['far']:.4f}, FRR "
        f"{decision['frr']:.4f} (across photos: {decision['frr_across_photos']:.4f}). Same-person scores "
        f"{decision['same_min']:.4f} min, {decision['same_mean']:.4f} mean; different-person "
        f"{decision['different_mean']:.4f} mean, {decision['different_max']:.4f} max.",
        "",
        "## The group photo",
        "",
        f"{group['people']} people found, {group['pairs']} pairs: highest score {group['max']:.4f} "
        f"(threshold {decision['threshold']}), mean {group['mean']:.4f}.",
        "",
        "## FDM behind drawn occluders",
        "",
        f"{fdm['probes']} occluded probes of {fdm['faces']} faces ({fdm['people']} people), each against "
        f"every enrolled face; occluders {', '.join(fdm['occluders'])}.",
        "",
        "| masks | same-person mean | different-person mean | different-person max | rank-1 |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("none", "none"), ("fdm", "FDM, true cells"), ("auto", "FDM, occlusion=auto")):
        if name in fdm:
            row = fdm[name]
            lines.append(
                f"| {label} | {row['same_mean']:.4f} | {row['different_mean']:.4f} | {row['different_max']:.4f} "
                f"| {row['rank1']:.2f} |"
            )
    lines += ["", "Same-person mean by occluder (none / FDM):", ""]
    for kind, plain in fdm["none"]["same_by_occluder"].items():
        lines.append(f"- {kind}: {plain:.4f} / {fdm['fdm']['same_by_occluder'][kind]:.4f}")
    if estimator := report.get("estimator"):
        lines += [
            "",
            "## The occlusion estimator",
            "",
            f"On {estimator['clean_chips']} clean chips of {estimator['faces']} faces ({estimator['people']} people): "
            f"{estimator['clean_flagged']:.3f} have any cell flagged. Behind drawn occluders "
            f"({estimator['occluded_chips']} chips, {estimator['covered_cells']} covered cells): it finds "
            f"{estimator['recall']:.3f} of the covered cells, and {estimator['precision']:.3f} of the cells it flags "
            "are covered.",
            "",
            "Covered cells found, by occluder: "
            + ", ".join(f"{kind} {value:.3f}" for kind, value in estimator["recall_by_occluder"].items()),
        ]
    return "\n".join(lines) + "\n"


def evaluate_on_real_faces(
    checkpoint: Path, dictionary: Path, work: Path, out: Path, estimator: Path | None = None
) -> dict:
    """Export the model (with ``estimator``, if given) into ``work/bundle``, measure it, and write the report
    into ``out`` as ``evaluation.json`` and ``evaluation.md``."""
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    bundle = work / "bundle"
    export_bundle(ExportRequest(out=bundle, checkpoint=checkpoint, dictionary=dictionary, overwrite=True))
    if estimator is not None:
        from pdsn.export.estimator_bundle import add_estimator

        add_estimator(bundle, estimator)
    report = {**measure(bundle), "machine": describe_machine()}
    (out / EVALUATION_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out / EVALUATION_MD).write_text(markdown(report))
    return report
