"""Putting the occlusion estimator into a bundle (``pdsn add-estimator``; ``pdsn export`` does it for the demo model).

The estimator is exported and gated against PyTorch in the bundle writer's staging folder, then
placed and recorded under the manifest's ``estimator`` in one atomic manifest switch, like a variant.
Its evaluation report (``pdsn evaluate-occlusion --report``), when there is one for these weights,
travels with it: copied into the bundle, hashed, its goals summarised in the manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pdsn.export.estimator_export import write_estimator
from pdsn.model.bundle_format import sha256_file
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR, load_estimator

EVALUATION_REPORT = "reports/estimator-evaluation.json"
EVALUATION_MARKDOWN = "reports/estimator-evaluation.md"


def evaluation_beside(estimator: str | Path) -> Path:
    """Where ``pdsn add-estimator`` looks for an estimator's report by default: NAME_evaluation.json."""
    estimator = Path(estimator)
    return estimator.with_name(f"{estimator.stem}_evaluation.json")


def add_estimator(
    bundle: str | Path, estimator: str | Path = SHIPPED_ESTIMATOR, evaluation: str | Path | None = None
) -> dict:
    """Export ``estimator`` (a ``pdsn train-occlusion`` .pth) into ``bundle``; returns its manifest entry.

    ``evaluation``: its ``pdsn evaluate-occlusion --report`` JSON (default: NAME_evaluation.json beside
    the .pth, when present; a Markdown file of the same stem goes with it). A report of other weights
    is refused.
    """
    trained = load_estimator(estimator)
    report = _evaluation_of(Path(estimator), evaluation)
    with BundleWrite(Path(bundle), "pdsn add-estimator") as write:
        manifest = write.existing
        contract = manifest.contract
        if contract.image_layout != "nhwc-uint8":
            raise ValueError(
                f"bundle {bundle} takes {contract.image_layout} images; the occlusion estimator reads uint8 RGB "
                f"crops, so it is only added to bundles exported with uint8 input (the default)"
            )
        entry = write_estimator(trained, write.staging)
        entry["file"] = write.place(write.staging / entry["file"], entry["file"])
        parity = entry["parity"]["report"]
        entry["parity"]["report"] = write.place(write.staging / parity, parity)
        entry["evaluation"] = None if report is None else _place_evaluation(write, *report)
        entry["source"] = str(estimator)
        document = manifest.document()
        document["estimator"] = entry
        write.commit(document)
    return entry


def _evaluation_of(estimator: Path, evaluation: str | Path | None) -> tuple[Path, dict] | None:
    path = evaluation_beside(estimator) if evaluation is None else Path(evaluation)
    if not path.is_file():
        if evaluation is None:
            return None
        raise FileNotFoundError(
            f"evaluation={path}: no such file; write one with `pdsn evaluate-occlusion --estimator {estimator} "
            f"--report {path}`"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"evaluation={path} is not a JSON report of `pdsn evaluate-occlusion` ({exc})") from exc
    weights = sha256_file(estimator)
    recorded = report.get("estimator_sha256") if isinstance(report, dict) else None
    if recorded != weights or not isinstance(report.get("goals"), dict):
        raise ValueError(
            f"evaluation={path} is not a report of {estimator} (it records estimator SHA-256 {recorded}, the "
            f"weights have {weights}); evaluate these weights with `pdsn evaluate-occlusion --estimator "
            f"{estimator} --report {path}`"
        )
    return path, report


def _place_evaluation(write: BundleWrite, path: Path, report: dict) -> dict:
    staged = write.staging / EVALUATION_REPORT
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, staged)
    placed: dict[str, object] = {"report": write.place(staged, EVALUATION_REPORT), "markdown": None}
    markdown = path.with_suffix(".md")
    if markdown.is_file():
        shutil.copyfile(markdown, write.staging / EVALUATION_MARKDOWN)
        placed["markdown"] = write.place(write.staging / EVALUATION_MARKDOWN, EVALUATION_MARKDOWN)
    placed["goals_met"] = all(goal.get("met") is True for goal in report["goals"].values())
    placed["goals"] = {
        name: {"value": goal.get("value"), "goal": goal.get("goal")} for name, goal in report["goals"].items()
    }
    return placed
