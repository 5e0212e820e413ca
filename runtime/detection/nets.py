"""The three MTCNN nets opened on ONNX Runtime (CPU or CUDA) or OpenVINO (CPU), as plain callables.

A net is called with one float32 NCHW batch and returns its outputs in the contract's order.
ONNX Runtime sessions may be run from several threads at once; an OpenVINO infer request may
not, so each thread gets its own requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pdsn.model.detector_contract import IMAGE_INPUT
from pdsn.runtime.backends.base import BackendUnavailableError

DETECTOR_BACKENDS = ("onnxruntime", "openvino")
DETECTOR_DEVICES = ("cpu", "cuda")

Net = Callable[[np.ndarray], list[np.ndarray]]


def open_nets(
    paths: dict[str, Path],
    outputs: dict[str, tuple[str, ...]],
    sizes: dict[str, int | None],
    backend: str,
    device: str,
    threads: int | None,
) -> tuple[dict[str, Net], dict]:
    """Each net of ``paths`` opened on ``backend``/``device``; returns the callables and a description.

    ``outputs`` names each net's outputs; ``sizes`` its input side (None: any), checked against the file.
    """
    if backend not in DETECTOR_BACKENDS:
        raise ValueError(f"backend: the face detector runs on one of {DETECTOR_BACKENDS}, got {backend!r}")
    if device not in DETECTOR_DEVICES:
        raise ValueError(f"device: expected one of {DETECTOR_DEVICES}, got {device!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive integer or None (the library's default), got {threads!r}")
    for name, path in paths.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name}: no such file {str(path)!r}; expected the detector's {name}.onnx")
    opened = _open_openvino if backend == "openvino" else _open_onnxruntime
    return opened(paths, outputs, sizes, device, threads)


def _open_onnxruntime(paths, outputs, sizes, device, threads):
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"the face detector on device={device!r} needs ONNX Runtime's {provider}, but this onnxruntime offers "
            f"{ort.get_available_providers()}; install onnxruntime-gpu, or run the detector with device='cpu'"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Three sessions, three thread pools: a pool spinning after its net ran would take a core from
    # the next net's pool (measured: R- and O-Net twice as slow with spinning on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    nets, providers = {}, []
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), options, providers=[provider])
        inputs, got = session.get_inputs(), [o.name for o in session.get_outputs()]
        spatial = [d if isinstance(d, int) else None for d in inputs[0].shape[2:]]
        _check(name, path, [i.name for i in inputs], spatial, got, outputs[name], sizes[name])
        nets[name] = _ort_runner(session, list(outputs[name]))
        providers = session.get_providers()
    return nets, {"backend": "onnxruntime", "device": device, "providers": providers, "threads": threads}


def _ort_runner(session, names: list[str]) -> Net:
    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(names, {IMAGE_INPUT: batch})

    return run


def _open_openvino(paths, outputs, sizes, device, threads):
    if device != "cpu":
        raise BackendUnavailableError(
            f"the openvino backend runs the face detector on the CPU only, not device={device!r}"
        )
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, hints.inference_precision: ov.Type.f32}
    if threads:
        config[props.inference_num_threads] = threads
    core = ov.Core()
    nets = {}
    for name, path in paths.items():
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        inputs = [port.get_any_name() for port in compiled.inputs]
        shape = compiled.inputs[0].get_partial_shape()
        spatial = [d.get_length() if d.is_static else None for d in list(shape)[2:]]
        got = [port.get_any_name() for port in compiled.outputs]
        _check(name, path, inputs, spatial, got, outputs[name], sizes[name])
        nets[name] = _openvino_runner(compiled, list(outputs[name]))
    return nets, {"backend": "openvino", "device": "cpu", "threads": threads}


def _openvino_runner(compiled, names: list[str]) -> Net:
    local = threading.local()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        result = request.infer({IMAGE_INPUT: batch}, share_outputs=False)
        return [result[name] for name in names]

    return run


def _check(net, path, inputs: list[str], spatial: list, got: list[str], expected: tuple[str, ...], size) -> None:
    if inputs != [IMAGE_INPUT] or sorted(got) != sorted(expected) or spatial != [size, size]:
        wanted = "H x W" if size is None else f"{size} x {size}"
        raise ValueError(
            f"{net} ({path}): inputs {inputs} of spatial shape {spatial} -> outputs {got}, expected "
            f"[{IMAGE_INPUT!r}] ({wanted}) -> {list(expected)}; pass the {net}.onnx made by "
            f"`pdsn.export.detector_export.convert_mtcnn`"
        )
