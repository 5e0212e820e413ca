"""``occlusion="auto"``: the bundle's occlusion estimator finds the occluded cells from the pixels.

The estimator (``estimator.onnx``, hashed in the manifest) maps aligned uint8 crops to the
probability that each grid cell is occluded; the per-cell thresholds chosen on validation data at
training time turn them into the 0/1 vectors the recognition model takes. It runs where the
model's trunk runs: on OpenVINO's CPU plugin beside an OpenVINO model, on ONNX Runtime (CPU or
CUDA) beside an ONNX Runtime model or a TensorRT engine. It is small (about 1% of LResNet50E-IR's
compute), so a TensorRT node runs it on ONNX Runtime's CUDA provider rather than an engine of its own.
"""

from __future__ import annotations

import threading

import numpy as np

from pdsn.model.bundle_format import BundleIntegrityError, ModelContract
from pdsn.model.estimator_contract import ESTIMATOR_IMAGE_INPUT, ESTIMATOR_OUTPUT, cells_from_probabilities
from pdsn.model.manifest import Estimator
from pdsn.runtime.backends.onnx_parts import open_session
from pdsn.runtime.backends.registry import ONNX_PART_BACKENDS
from pdsn.runtime.bundle import Bundle

AUTO = "auto"


ESTIMATOR_BACKENDS = ONNX_PART_BACKENDS


class OcclusionEstimator:
    """The bundle's estimator on ``backend`` (one of ESTIMATOR_BACKENDS) and ``device``;
    ``cells(images)`` gives float32 (N, 25) 0/1 vectors."""

    def __init__(
        self, bundle: Bundle, backend: str = "onnxruntime", device: str = "cpu", threads: int | None = None
    ) -> None:
        if backend not in ESTIMATOR_BACKENDS:
            raise ValueError(f"the occlusion estimator runs on one of {ESTIMATOR_BACKENDS}, not {backend!r}")
        entry = bundle.manifest.estimator
        if entry is None:
            raise ValueError(
                f'occlusion="auto" needs an occlusion estimator in the bundle, and {bundle.path} has none; add '
                f"one with `pdsn add-estimator --bundle {bundle.path}` (or pass the occluded cells)"
            )
        _check_contract(entry, bundle.contract, bundle.path)
        path = bundle.file(entry.file, "estimator.file")
        session = open_session(path, backend, device, threads, "the occlusion estimator")
        self._session, self._where = session, session.description
        names = (session.inputs, session.outputs)
        if names != ([ESTIMATOR_IMAGE_INPUT], [ESTIMATOR_OUTPUT]):
            raise BundleIntegrityError(
                f"{path}: inputs/outputs {names}, expected [{ESTIMATOR_IMAGE_INPUT!r}] -> [{ESTIMATOR_OUTPUT!r}]; "
                f"add the estimator again with `pdsn add-estimator`"
            )
        self.thresholds = np.asarray(entry.thresholds, dtype=np.float32)
        cells_from_probabilities(np.zeros((1, len(self.thresholds)), np.float32), self.thresholds)  # checks them
        self._lock = threading.Lock()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Per-cell occlusion probabilities, float32 (N, 25), of uint8 (N, 112, 96, 3) crops."""
        with self._lock:
            return self._session.run({ESTIMATOR_IMAGE_INPUT: images}, [ESTIMATOR_OUTPUT])[0]

    def cells(self, images: np.ndarray) -> np.ndarray:
        """Occlusion vectors of uint8 (N, 112, 96, 3) crops, as prepared for the recognition model."""
        return cells_from_probabilities(self.probabilities(images), self.thresholds)

    def describe(self) -> dict:
        """Where the estimator runs: backend, device or providers."""
        return dict(self._where)


def _check_contract(estimator: Estimator, contract: ModelContract, where) -> None:
    """The estimator must read the model's crops and speak of the model's grid."""
    problems = []
    if estimator.grid != contract.grid:
        problems.append(f"grid {estimator.grid} against the model's {contract.grid}")
    shape = list(estimator.image_shape)
    if shape != list(contract.image_shape) or contract.image_layout != "nhwc-uint8":
        problems.append(f"input {shape} against the model's {contract.image_layout} {list(contract.image_shape)}")
    if problems:
        raise BundleIntegrityError(
            f"bundle {where}: its occlusion estimator was made for another model ({'; '.join(problems)}); "
            f"add a matching one with `pdsn add-estimator --bundle {where}`"
        )
