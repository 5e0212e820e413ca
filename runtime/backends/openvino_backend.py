"""OpenVINO backend for CPU edge boxes: FDM function inlined, one compiled model, a pool of requests."""

from __future__ import annotations

import io
import queue
from collections.abc import Callable

import numpy as np

from pdsn.model.bundle_format import (
    DICTIONARY_INPUT,
    EMBEDDING_OUTPUT,
    FEATURES_OUTPUT,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    ModelContract,
)
from pdsn.runtime.backends.base import Backend, BackendUnavailableError
from pdsn.runtime.model_io import TensorSpec, check_model_io, check_role

HINTS = ("latency", "throughput")
_INSTALL_HINT = 'pip install "pdsn-deploy[openvino]"'


class OpenVinoBackend(Backend):
    """Runs a bundle's model variant (fp32 or int8 Q/DQ alike) on OpenVINO's CPU plugin.

    The model is compiled once with its dynamic batch dimension, so any batch size runs
    without recompiling. Each infer request holds the mask dictionary bound once, at
    creation; concurrent ``infer`` calls each take their own request from a pool.
    """

    name = "openvino"

    def __init__(
        self,
        model_path: str,
        dictionary: np.ndarray,
        contract: ModelContract,
        device: str = "cpu",
        hint: str = "latency",
        threads: int | None = None,
        role: str = "embedding",
    ) -> None:
        self._embeds = check_role(role) == "embedding"
        self._output = EMBEDDING_OUTPUT if self._embeds else FEATURES_OUTPUT
        if device != "cpu":
            raise BackendUnavailableError(
                f"device={device!r}: the openvino backend runs on the CPU only (OpenVINO's CPU "
                f"plugin); use device='cpu', or backend='onnxruntime' or 'tensorrt' for NVIDIA GPUs"
            )
        if hint not in HINTS:
            raise ValueError(
                f"hint {hint!r} is not one of {HINTS}; pick 'latency' for one "
                f"request at a time or 'throughput' for many concurrent ones"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (OpenVINO decides), got {threads!r}")
        ov, hints, props = _import_openvino()
        config = {
            hints.performance_mode: {
                "latency": hints.PerformanceMode.LATENCY,
                "throughput": hints.PerformanceMode.THROUGHPUT,
            }[hint],
            # The CPU plugin defaults to bf16 on CPUs with AMX; the fp32 variant must stay fp32.
            # Quantized (Q/DQ) variants still run their int8 parts in int8 under this hint.
            hints.inference_precision: ov.Type.f32,
        }
        if threads is not None:
            config[props.inference_num_threads] = threads
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(_inlined_onnx(model_path)), "CPU", config)
        check_model_io(
            contract, _specs(self._compiled.inputs), _specs(self._compiled.outputs), f"model {model_path}", role
        )
        self._dictionary = None
        if contract.dictionary_binding == "input" and self._embeds:
            # Bound once per request: set_tensor persists across infers. Measured on the full
            # LResNet50E-IR against folding the dictionary into the model as a constant, the two
            # ran equally fast at batch 1 and 8 (within 2%, wall and CPU time, noise either way), so
            # the binding the contract describes is kept.
            self._dictionary = ov.Tensor(np.ascontiguousarray(dictionary, dtype=np.float32))
        size = max(1, int(self._compiled.get_property(props.optimal_number_of_infer_requests)))
        self._requests: queue.Queue | None = queue.Queue()
        for _ in range(size):
            request = self._compiled.create_infer_request()
            if self._dictionary is not None:
                request.set_tensor(DICTIONARY_INPUT, self._dictionary)
            self._requests.put(request)
        self._version = ov.get_version()
        self._precision = self._compiled.get_property(hints.inference_precision).get_type_name()
        # What the plugin chose when threads=None, or the count asked for.
        self._threads = int(self._compiled.get_property(props.inference_num_threads))
        self._hint, self._pool_size = hint, size
        self._model_path = str(model_path)
        # With the throughput hint the plugin runs several streams; the batcher then keeps two
        # batches in flight (``start``) so both streams compute at once.
        self.pipelined = hint == "throughput" and size > 1

    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        requests = self._requests
        if requests is None:
            raise RuntimeError("the openvino backend was closed")
        request = requests.get()
        try:
            result = request.infer(self._feeds(images, occlusion), share_inputs=True, share_outputs=False)
            return self._shaped(result[self._output])
        finally:
            requests.put(request)

    def start(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], np.ndarray]:
        """Start a batch on a free request of the pool; the returned call waits for its embeddings."""
        requests = self._requests
        if requests is None:
            raise RuntimeError("the openvino backend was closed")
        request = requests.get()
        try:
            request.start_async(self._feeds(images, occlusion), share_inputs=True)
        except BaseException:
            requests.put(request)
            raise

        def wait() -> np.ndarray:
            try:
                request.wait()
                return self._shaped(request.get_tensor(self._output).data.copy())
            finally:
                requests.put(request)

        return wait

    def direct_call(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], object]:
        """A request of its own (outside the pool) with every input set once; calling it runs ``infer()``."""
        if self._compiled is None:
            raise RuntimeError("the openvino backend was closed")
        import openvino as ov

        request = self._compiled.create_infer_request()
        request.set_tensor(IMAGE_INPUT, ov.Tensor(np.ascontiguousarray(images)))
        if self._embeds:
            request.set_tensor(OCCLUSION_INPUT, ov.Tensor(np.ascontiguousarray(occlusion)))
        if self._dictionary is not None:
            request.set_tensor(DICTIONARY_INPUT, self._dictionary)
        return request.infer

    def _feeds(self, images: np.ndarray, occlusion: np.ndarray) -> dict:
        return {IMAGE_INPUT: images, OCCLUSION_INPUT: occlusion} if self._embeds else {IMAGE_INPUT: images}

    def _shaped(self, output: np.ndarray) -> np.ndarray:
        """Embeddings as they are; a trunk's feature maps flattened to (N, C*H*W)."""
        return output if self._embeds else output.reshape(len(output), -1)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "version": self._version,
            "device": "cpu",
            "hint": self._hint,
            "threads": self._threads,
            "infer_requests": self._pool_size,
            "inference_precision": self._precision,
            "model": self._model_path,
        }

    def close(self) -> None:
        self._requests = None
        self._compiled = None
        self._dictionary = None


def _import_openvino():
    try:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints
    except ImportError as exc:
        raise BackendUnavailableError(f"the openvino backend needs OpenVINO: {_INSTALL_HINT}") from exc
    return ov, hints, props


def _inlined_onnx(model_path: str) -> io.BytesIO:
    """The model with its local functions inlined, serialized in memory for ``Core.read_model``.

    OpenVINO has no conversion rule for ONNX model-local functions such as ``ai.pdsn::FdmGatherMul``
    (docs/architecture.md, "The ONNX contract"); their bodies are standard ops, so inlining them is exact.
    """
    try:
        import onnx
        from onnx.inliner import inline_local_functions
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the openvino backend needs onnx to inline the model's FDM function: {_INSTALL_HINT}"
        ) from exc
    model = inline_local_functions(onnx.load(str(model_path)))
    return io.BytesIO(model.SerializeToString())


def _specs(ports) -> list[TensorSpec]:
    """A compiled model's ports as TensorSpecs, each by the contract's name where it has several."""
    specs = []
    for port in ports:
        names = port.get_names()
        known = (IMAGE_INPUT, OCCLUSION_INPUT, DICTIONARY_INPUT, EMBEDDING_OUTPUT, FEATURES_OUTPUT)
        name = next((n for n in known if n in names), None)
        shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        specs.append(TensorSpec(name or port.get_any_name(), port.get_element_type().to_dtype().name, shape))
    return specs
