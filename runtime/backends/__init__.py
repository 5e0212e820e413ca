"""Inference backends behind one interface; each imports its engine library lazily."""

from __future__ import annotations

import importlib.util
import platform

from pdsn.kernels.tensorrt_modules import import_tensorrt
from pdsn.model.manifest import Manifest
from pdsn.runtime.backends.base import Backend, BackendUnavailableError
from pdsn.runtime.backends.registry import BACKENDS, ENGINE_BACKENDS, REGISTRY, REMOTE_BACKENDS

DEVICES = ("cpu", "cuda")
BACKEND_CHOICES = ("auto", *BACKENDS, *REMOTE_BACKENDS)
# x86 CPUs, where OpenVINO's CPU plugin ran every precision faster than ONNX Runtime's CPU provider
# in this project's benchmarks (bench/results).
_OPENVINO_MACHINES = ("x86_64", "amd64", "i386", "i686")


def resolve_backend(name: str, device: str, manifest: Manifest) -> str:
    """The backend ``name`` stands for: itself, or for ``auto`` the fastest one usable here.

    ``auto`` on ``cuda``: a data-centre TensorRT engine of the bundle when TensorRT is installed,
    else a TensorRT-RTX engine with TensorRT-RTX installed, else ONNX Runtime's CUDA provider. On
    ``cpu``: OpenVINO on x86 when it (and onnx, which inlines the FDM function for it) is installed,
    else ONNX Runtime.
    """
    if name not in BACKEND_CHOICES:
        raise ValueError(f"backend {name!r} is not one of {BACKEND_CHOICES}")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if name != "auto":
        return name
    if device == "cuda":
        built = {entry.flavour for entry in manifest.engines.values()}
        for flavour in ENGINE_BACKENDS:
            if flavour in built and import_tensorrt(flavour, "Runtime") is not None:
                return flavour
        return "onnxruntime"
    installed = all(importlib.util.find_spec(module) is not None for module in ("openvino", "onnx"))
    return "openvino" if installed and platform.machine().lower() in _OPENVINO_MACHINES else "onnxruntime"


def create_backend(name: str, model_path: str, dictionary, contract, device: str = "cpu", **options) -> Backend:
    """Instantiate backend ``name`` (one of BACKENDS or REMOTE_BACKENDS; resolve ``auto`` first with ``resolve_backend``)."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    kind = REGISTRY.get(name)
    if kind is None:
        raise ValueError(
            f"backend {name!r} is not one of {BACKENDS + REMOTE_BACKENDS} (resolve 'auto' with resolve_backend first)"
        )
    return kind.load()(model_path, dictionary, contract, device=device, **options)


__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "DEVICES",
    "ENGINE_BACKENDS",
    "REMOTE_BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "create_backend",
    "resolve_backend",
]
