"""The inference backends the runtime knows, with what each can do: the one place that names them.

A backend's class is imported only when one is opened, so a missing engine library costs nothing
until it is asked for. Every backend takes ``(model_path, dictionary, contract, device=..., **options)``;
the engine-based ones take the bundle's engine entry as the ``engine`` option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from pdsn.runtime.backends.base import Backend


@dataclass(frozen=True)
class BackendKind:
    """One backend and its capabilities."""

    name: str
    module: str
    class_name: str
    remote: bool = False  # a model server runs the model, not this process (``auto`` never picks one)
    engine_based: bool = False  # runs a bundle's built TensorRT engine, not its ONNX file
    runs_onnx_parts: bool = False  # runs the occlusion estimator's and the face detector's ONNX files too

    def load(self) -> Callable[..., Backend]:
        """The backend's class: ``(model_path, dictionary, contract, device=..., **options)``, options its own."""
        return getattr(importlib.import_module(self.module), self.class_name)


_PACKAGE = "pdsn.runtime.backends"
KINDS = (
    BackendKind("onnxruntime", f"{_PACKAGE}.onnxruntime_backend", "OnnxRuntimeBackend", runs_onnx_parts=True),
    BackendKind("openvino", f"{_PACKAGE}.openvino_backend", "OpenVinoBackend", runs_onnx_parts=True),
    BackendKind("tensorrt", f"{_PACKAGE}.tensorrt_backend", "TensorRTBackend", engine_based=True),
    BackendKind("tensorrt-rtx", f"{_PACKAGE}.tensorrt_backend", "TensorRTBackend", engine_based=True),
    BackendKind("triton", f"{_PACKAGE}.triton_backend", "TritonBackend", remote=True),
)
REGISTRY = {kind.name: kind for kind in KINDS}

# Local backends: they run the model in this process (`pdsn verify` checks each of them).
BACKENDS = tuple(kind.name for kind in KINDS if not kind.remote)
ENGINE_BACKENDS = tuple(kind.name for kind in KINDS if kind.engine_based)
REMOTE_BACKENDS = tuple(kind.name for kind in KINDS if kind.remote)
# The backends that run the estimator's and the detector's ONNX files on named tensors.
ONNX_PART_BACKENDS = tuple(kind.name for kind in KINDS if kind.runs_onnx_parts)
