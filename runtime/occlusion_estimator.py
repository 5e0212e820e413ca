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
from pdsn.runtime.backends.base import BackendUnavailableError
from pdsn.runtime.bundle import Bundle

AUTO = "auto"


ESTIMATOR_BACKENDS = ("onnxruntime", "openvino")


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
        opened = _open_openvino if backend == "openvino" else _open_onnxruntime
        self._run, names, self._where = opened(str(path), device, threads)
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
            return self._run(images)

    def cells(self, images: np.ndarray) -> np.ndarray:
        """Occlusion vectors of uint8 (N, 112, 96, 3) crops, as prepared for the recognition model."""
        return cells_from_probabilities(self.probabilities(images), self.thresholds)

    def describe(self) -> dict:
        """Where the estimator runs: backend, device or providers."""
        return dict(self._where)


def _open_onnxruntime(path: str, device: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"the occlusion estimator on device={device!r} needs ONNX Runtime's {provider}, but this onnxruntime "
            f"offers {ort.get_available_providers()}; install onnxruntime-gpu, or open the Recognizer on the CPU"
        )
    session = ort.InferenceSession(path, options, providers=[provider])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])

    def run(images: np.ndarray) -> np.ndarray:
        return session.run([ESTIMATOR_OUTPUT], {ESTIMATOR_IMAGE_INPUT: images})[0]

    return run, names, {"backend": "onnxruntime", "device": device, "providers": session.get_providers()}


def _open_openvino(path: str, device: str, threads: int | None):
    if device != "cpu":
        raise BackendUnavailableError(f"the openvino backend runs on the CPU only, not device={device!r}")
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, hints.inference_precision: ov.Type.f32}
    if threads:
        config[props.inference_num_threads] = threads
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    names = ([port.get_any_name() for port in compiled.inputs], [port.get_any_name() for port in compiled.outputs])

    def run(images: np.ndarray) -> np.ndarray:
        return request.infer({ESTIMATOR_IMAGE_INPUT: images}, share_outputs=False)[ESTIMATOR_OUTPUT]

    return run, names, {"backend": "openvino", "device": "cpu"}


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
