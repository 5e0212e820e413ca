"""``occlusion="auto"``: the bundle's occlusion estimator finds the occluded cells from the pixels.

The estimator (``estimator.onnx``, hashed in the manifest) maps aligned uint8 crops to the
probability that each grid cell is occluded; the per-cell thresholds chosen on validation data at
training time turn them into the 0/1 vectors the recognition model takes. It is small (about 1%
of LResNet50E-IR's compute), so it runs on ONNX Runtime's CPU provider, wherever the model runs.
"""

from __future__ import annotations

import threading

import numpy as np

from pdsn.model.bundle_format import BundleIntegrityError, ModelContract
from pdsn.model.estimator_contract import ESTIMATOR_IMAGE_INPUT, ESTIMATOR_OUTPUT, cells_from_probabilities
from pdsn.runtime.bundle import Bundle

AUTO = "auto"


class OcclusionEstimator:
    """The bundle's estimator on ONNX Runtime; ``cells(images)`` gives float32 (N, 25) 0/1 vectors."""

    def __init__(self, bundle: Bundle) -> None:
        entry = bundle.manifest.get("estimator")
        if entry is None:
            raise ValueError(
                f'occlusion="auto" needs an occlusion estimator in the bundle, and {bundle.path} has none; add '
                f"one with `pdsn add-estimator --bundle {bundle.path}` (or pass the occluded cells)"
            )
        _check_contract(entry["contract"], bundle.contract, bundle.path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        path = bundle.file(entry["file"], "estimator.file")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = ([i.name for i in self._session.get_inputs()], [o.name for o in self._session.get_outputs()])
        if names != ([ESTIMATOR_IMAGE_INPUT], [ESTIMATOR_OUTPUT]):
            raise BundleIntegrityError(
                f"{path}: inputs/outputs {names}, expected [{ESTIMATOR_IMAGE_INPUT!r}] -> [{ESTIMATOR_OUTPUT!r}]; "
                f"add the estimator again with `pdsn add-estimator`"
            )
        self.thresholds = np.asarray(entry["contract"]["thresholds"], dtype=np.float32)
        cells_from_probabilities(np.zeros((1, len(self.thresholds)), np.float32), self.thresholds)  # checks them
        self._lock = threading.Lock()

    def cells(self, images: np.ndarray) -> np.ndarray:
        """Occlusion vectors of uint8 (N, 112, 96, 3) crops, as prepared for the recognition model."""
        with self._lock:
            probabilities = self._session.run([ESTIMATOR_OUTPUT], {ESTIMATOR_IMAGE_INPUT: images})[0]
        return cells_from_probabilities(probabilities, self.thresholds)


def _check_contract(estimator: dict, contract: ModelContract, where) -> None:
    """The estimator must read the model's crops and speak of the model's grid."""
    problems = []
    if estimator.get("grid") != contract.grid:
        problems.append(f"grid {estimator.get('grid')} against the model's {contract.grid}")
    shape = estimator.get("inputs", {}).get(ESTIMATOR_IMAGE_INPUT, {}).get("shape", [])[1:]
    if list(shape) != list(contract.image_shape) or contract.image_layout != "nhwc-uint8":
        problems.append(f"input {shape} against the model's {contract.image_layout} {list(contract.image_shape)}")
    if problems:
        raise BundleIntegrityError(
            f"bundle {where}: its occlusion estimator was made for another model ({'; '.join(problems)}); "
            f"add a matching one with `pdsn add-estimator --bundle {where}`"
        )
