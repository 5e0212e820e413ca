"""Inference backends behind one interface; each imports its engine library lazily."""

from __future__ import annotations

from pdsn.runtime.backends.base import Backend, BackendUnavailableError

BACKENDS = ("onnxruntime", "openvino")
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
    raise ValueError(f"backend {name!r} is not one of {('auto', *BACKENDS)}")


__all__ = ["BACKENDS", "DEVICES", "Backend", "BackendUnavailableError", "create_backend"]
