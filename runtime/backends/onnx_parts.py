"""One way to open the bundle's small ONNX parts (the occlusion estimator, the face detector's nets) on a
backend and run them on named tensors.

The recognition model has its own backends (batching, the dictionary on the device); these parts
are small, fed one batch at a time by the caller, and only need a session that takes and returns
arrays by name on the backends of ``ONNX_PART_BACKENDS``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.runtime.backends.base import BackendUnavailableError
from pdsn.runtime.backends.registry import ONNX_PART_BACKENDS


@dataclass(frozen=True)
class NamedSession:
    """An ONNX file opened on a backend: ``run`` takes arrays by input name and returns the outputs asked for."""

    inputs: list[str]
    outputs: list[str]
    spatial: list[int | None]  # the first input's dimensions after batch and channels (None: any)
    description: dict
    _run: Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        return self._run(feeds, names)


def open_session(
    path: str | Path, backend: str, device: str, threads: int | None, what: str, quiet_pools: bool = False
) -> NamedSession:
    """``path`` opened on ``backend``/``device`` for ``what`` (named in errors).

    ``quiet_pools``: ONNX Runtime's threads sleep between runs instead of spinning, for parts that run
    one after another in turn (the detector's three nets: a pool spinning after its net ran would take a
    core from the next net's pool).
    """
    if backend not in ONNX_PART_BACKENDS:
        raise ValueError(f"backend: {what} runs on one of {ONNX_PART_BACKENDS}, got {backend!r}")
    if backend == "openvino":
        return _openvino(str(path), device, threads, what)
    return _onnxruntime(str(path), device, threads, what, quiet_pools)


def _onnxruntime(path: str, device: str, threads: int | None, what: str, quiet_pools: bool) -> NamedSession:
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"{what} on device={device!r} needs ONNX Runtime's {provider}, but this onnxruntime offers "
            f"{ort.get_available_providers()}; install onnxruntime-gpu, or run it with device='cpu'"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if quiet_pools:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=[provider])
    inputs = session.get_inputs()
    return NamedSession(
        inputs=[i.name for i in inputs],
        outputs=[o.name for o in session.get_outputs()],
        spatial=[d if isinstance(d, int) else None for d in inputs[0].shape[2:]],
        description={"backend": "onnxruntime", "device": device, "providers": session.get_providers()},
        _run=lambda feeds, names: session.run(names, feeds),
    )


def _openvino(path: str, device: str, threads: int | None, what: str) -> NamedSession:
    if device != "cpu":
        raise BackendUnavailableError(f"the openvino backend runs {what} on the CPU only, not device={device!r}")
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, hints.inference_precision: ov.Type.f32}
    if threads:
        config[props.inference_num_threads] = threads
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    local = threading.local()  # an infer request per calling thread

    def run(feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        result = request.infer(feeds, share_outputs=False)
        return [result[name] for name in names]

    shape = compiled.inputs[0].get_partial_shape()
    return NamedSession(
        inputs=[port.get_any_name() for port in compiled.inputs],
        outputs=[port.get_any_name() for port in compiled.outputs],
        spatial=[d.get_length() if d.is_static else None for d in list(shape)[2:]],
        description={"backend": "openvino", "device": "cpu"},
        _run=run,
    )
