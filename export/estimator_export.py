"""The occlusion estimator to ONNX (``estimator.onnx``), checked against PyTorch.

The graph takes the recognition model's input, ``image`` uint8 [N, H, W, 3] RGB, and does the
cast, NHWC -> NCHW and ``(x/255 - 0.5)/0.5`` inside, as ``DeployGraph`` does; it returns
``occlusion_probability`` float32 [N, 25], the sigmoid of the cell logits. The per-cell thresholds
stay outside the graph, in the contract this module returns, so a runtime applies them with
``pdsn.model.estimator_contract.cells_from_probabilities`` and a bundle can record them.

The parity gate runs the file on ONNX Runtime's CPU provider and PyTorch eager FP32 on the same
faces: the probabilities must agree to ``max_abs_error``, and the thresholded cells must agree
everywhere except where PyTorch's probability is within that error of the cell's threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pdsn.errors import PdsnError
from pdsn.export.onnx_export import traced_onnx
from pdsn.model.comparison import onnx_session
from pdsn.model.estimator_contract import (
    ESTIMATOR_FILE,
    ESTIMATOR_FORMAT,
    ESTIMATOR_FORMAT_VERSION,
    ESTIMATOR_IMAGE_INPUT,
    ESTIMATOR_OUTPUT,
)
from pdsn.model.estimator_parity import PARITY_FACES, EstimatorGate, judge_estimator, parity_faces
from pdsn.model.grid import NUM_CELLS, grid_for
from pdsn.model.occlusion_net import OcclusionNet, TrainedEstimator

ESTIMATOR_PARITY_REPORT = "reports/estimator-parity.json"
DEFAULT_OPSET = 18


class EstimatorParityError(PdsnError, RuntimeError):
    """The exported estimator does not reproduce the PyTorch one."""


class EstimatorGraph(nn.Module):
    """What gets traced: uint8 NHWC crops -> normalised NCHW -> the network -> sigmoid."""

    def __init__(self, model: OcclusionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Cast before Transpose: TensorRT's Transpose does not take UInt8 tensors.
        x = (image.to(torch.float32).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
        return torch.sigmoid(self.model(x))


def export_estimator(estimator: TrainedEstimator, path: str | Path, opset: int = DEFAULT_OPSET) -> dict:
    """Write ``estimator`` as ONNX to ``path``; returns the contract (tensors, normalisation, grid, thresholds)."""
    proto = _trace(EstimatorGraph(estimator.model.eval()).eval(), estimator.model.architecture.input_size, opset)
    proto.producer_name = "pdsn-deploy"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return estimator_contract(estimator, opset)


def estimator_contract(estimator: TrainedEstimator, opset: int = DEFAULT_OPSET) -> dict:
    """What a caller feeds ``estimator.onnx``, what it returns, and how to read the output."""
    height, width = estimator.model.architecture.input_size
    return {
        "format": ESTIMATOR_FORMAT,
        "format_version": ESTIMATOR_FORMAT_VERSION,
        "inputs": {ESTIMATOR_IMAGE_INPUT: {"dtype": "uint8", "shape": ["N", height, width, 3], "color": "RGB"}},
        "outputs": {ESTIMATOR_OUTPUT: {"dtype": "float32", "shape": ["N", NUM_CELLS], "meaning": "sigmoid"}},
        "normalization": {"scale": 255.0, "mean": 0.5, "std": 0.5, "inside_graph": True},
        "grid": grid_for(height, width),
        "thresholds": [round(float(t), 6) for t in estimator.thresholds],
        "rule": "cell occluded where occlusion_probability >= thresholds[cell]",
        "min_coverage": estimator.record.get("min_coverage"),
        "opset": opset,
    }


def estimator_parity(
    estimator: TrainedEstimator, onnx_path: str | Path, faces: np.ndarray, gate: EstimatorGate = EstimatorGate()
) -> dict:
    """ONNX Runtime (CPU) against PyTorch eager FP32 on ``faces``: probability error and cell agreement, judged."""
    reference = estimator.probabilities(faces)
    session = onnx_session(onnx_path)
    got = session.run([ESTIMATOR_OUTPUT], {ESTIMATOR_IMAGE_INPUT: np.ascontiguousarray(faces, dtype=np.uint8)})[0]
    compared = f"onnxruntime CPU ({Path(onnx_path).name}) vs PyTorch eager FP32"
    try:
        return judge_estimator(reference, got, estimator.thresholds, compared, gate)
    except ValueError as exc:
        raise EstimatorParityError(str(exc)) from exc


def write_estimator(
    estimator: TrainedEstimator,
    directory: str | Path,
    faces: np.ndarray | None = None,
    gate: EstimatorGate = EstimatorGate(),
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Export to ``directory/estimator.onnx``, gate it, write ``reports/estimator-parity.json``; returns the entry.

    The entry (for a bundle manifest; its ``files`` hashes are the manifest writer's job) holds the
    file, the contract with thresholds, the parity summary and the estimator's provenance. A missed
    gate deletes the exported file, writes no report and raises ``EstimatorParityError`` naming
    what failed.
    """
    directory = Path(directory)
    onnx_path, report_path = directory / ESTIMATOR_FILE, directory / ESTIMATOR_PARITY_REPORT
    contract = export_estimator(estimator, onnx_path, opset)
    size = estimator.model.architecture.input_size
    try:
        report = estimator_parity(estimator, onnx_path, parity_faces(size=size) if faces is None else faces, gate)
        if faces is None:
            # What `pdsn verify` judges every backend's estimator against, without torch.
            report["reference"] = {
                "faces": {"generator": "parity_faces", "count": PARITY_FACES, "seed": 0, "size": list(size)},
                "pytorch_probabilities": estimator.probabilities(parity_faces(size=size)).round(7).tolist(),
            }
        if not report["passed"]:
            raise EstimatorParityError(
                f"{ESTIMATOR_FILE} does not reproduce PyTorch on {report['faces']} faces: "
                f"{'; '.join(report['failures'])}"
            )
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        raise
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return {
        "file": ESTIMATOR_FILE,
        "contract": contract,
        "parity": {
            "report": ESTIMATOR_PARITY_REPORT,
            "against": "pytorch-fp32",
            "max_abs_error": report["max_abs_error"],
            "cell_agreement": report["cell_agreement"],
            "passed": True,
        },
        "provenance": {
            "name": estimator.name,
            "network": estimator.record.get("network"),
            "validation": _validation_summary(estimator.record),
        },
    }


def _validation_summary(record: dict) -> dict | None:
    validation = record.get("validation")
    if not validation:
        return None
    return {
        "f1": validation["all"]["f1"],
        "precision": validation["all"]["precision"],
        "recall": validation["all"]["recall"],
        "clean_false_alarm_rate": validation["clean_false_alarm_rate"],
    }


def _trace(graph: EstimatorGraph, size: tuple[int, int], opset: int) -> onnx.ModelProto:
    image = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
    return traced_onnx(graph, (image,), [ESTIMATOR_IMAGE_INPUT], [ESTIMATOR_OUTPUT], opset)
