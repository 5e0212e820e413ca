"""Inference backends behind one interface; each imports its engine library lazily."""

from __future__ import annotations

from pdsn.runtime.backends.base import Backend, BackendUnavailableError

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "tensorrt-rtx")
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")  # run a bundle's built engine, not its ONNX file
DEVICES = ("cpu", "cuda")


def create_backend(name: str, model_path: str, dictionary, contract, device: str = "cpu", **options) -> Backend:
    """Instantiate backend ``name``; ``auto`` means the best one installed for ``device``."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if name in ("auto", "onnxruntime"):
        from pdsn.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, dictionary, contract, device=device, **options)
    if name == "openvino":
        from pdsn.runtime.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(model_path, dictionary, contract, device=device, **options)
    if name in ENGINE_BACKENDS:
        from pdsn.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, options.pop("engine"), dictionary, contract, device=device, **options)
    raise ValueError(f"backend {name!r} is not one of {('auto', *BACKENDS)}")


__all__ = ["BACKENDS", "DEVICES", "ENGINE_BACKENDS", "Backend", "BackendUnavailableError", "create_backend"]
