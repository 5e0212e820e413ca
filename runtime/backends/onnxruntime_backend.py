"""ONNX Runtime backend: CPU, or CUDA with I/O binding and the dictionary resident on the device."""

from __future__ import annotations

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

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32"}


class OnnxRuntimeBackend(Backend):
    """``role="features"`` runs a trunk model: its infer returns the flat feature maps (occlusion unused)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        dictionary: np.ndarray,
        contract: ModelContract,
        device: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        role: str = "embedding",
    ) -> None:
        self._embeds = check_role(role) == "embedding"
        self._output = EMBEDDING_OUTPUT if self._embeds else FEATURES_OUTPUT
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "the onnxruntime backend needs ONNX Runtime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
            ) from exc
        provider = _PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"device={device!r} needs ONNX Runtime's {provider}, but this onnxruntime "
                f"{ort.__version__} offers {ort.get_available_providers()}; install "
                f"onnxruntime-gpu with a matching CUDA, or use device='cpu'"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = [(provider, {"device_id": device_id})] if device == "cuda" else [provider]
        self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        active = self._session.get_providers()
        if active[0] != provider:
            raise BackendUnavailableError(
                f"ONNX Runtime did not start {provider} (active providers: {active}); refusing to "
                f"run on another device than the one asked for"
            )
        check_model_io(
            contract,
            _specs(self._session.get_inputs()),
            _specs(self._session.get_outputs()),
            f"model {model_path}",
            role,
        )
        self._device, self._device_id, self._threads = device, device_id, threads
        self._model_path = str(model_path)
        self._dictionary = None
        if contract.dictionary_binding == "input" and self._embeds:
            # Uploaded once; every call binds this same buffer (device memory on CUDA).
            self._dictionary = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(dictionary, dtype=np.float32), device, device_id
            )

    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("the onnxruntime backend was closed")
        binding = self._session.io_binding()
        binding.bind_cpu_input(IMAGE_INPUT, images)
        if self._embeds:
            binding.bind_cpu_input(OCCLUSION_INPUT, occlusion)
        if self._dictionary is not None:
            binding.bind_ortvalue_input(DICTIONARY_INPUT, self._dictionary)
        binding.bind_output(self._output, "cpu")
        self._session.run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()[0]
        return out if self._embeds else out.reshape(len(out), -1)

    def direct_call(self, images: np.ndarray, occlusion: np.ndarray):
        import onnxruntime as ort

        feeds = {IMAGE_INPUT: ort.OrtValue.ortvalue_from_numpy(images)}
        if self._embeds:
            feeds[OCCLUSION_INPUT] = ort.OrtValue.ortvalue_from_numpy(occlusion)
        if self._dictionary is not None:
            feeds[DICTIONARY_INPUT] = self._dictionary
        session, output = self._session, self._output
        return lambda: session.run_with_ort_values([output], feeds)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "version": ort.__version__,
            "device": self._device,
            "device_id": self._device_id,
            "providers": self._session.get_providers() if self._session else [],
            "threads": self._threads,
            "model": self._model_path,
        }

    def close(self) -> None:
        self._session = None
        self._dictionary = None


def _specs(args) -> list[TensorSpec]:
    """ONNX Runtime's ``NodeArg``s as TensorSpecs: symbolic or unknown dimensions are dynamic."""
    return [
        TensorSpec(
            a.name, _DTYPES.get(a.type, a.type), tuple(d if isinstance(d, int) and d >= 0 else None for d in a.shape)
        )
        for a in args
    ]
