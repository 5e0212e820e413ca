"""The three MTCNN nets opened on ONNX Runtime (CPU or CUDA) or OpenVINO (CPU), as plain callables.

A net is called with one float32 NCHW batch and returns its outputs in the contract's order.
ONNX Runtime sessions may be run from several threads at once; an OpenVINO infer request may
not, so each thread gets its own requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pdsn.model.detector_contract import IMAGE_INPUT
from pdsn.runtime.backends.onnx_parts import NamedSession, open_session
from pdsn.runtime.backends.registry import ONNX_PART_BACKENDS

DETECTOR_BACKENDS = ONNX_PART_BACKENDS
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
    nets, description = {}, {}
    for name, path in paths.items():
        session = open_session(path, backend, device, threads, "the face detector", quiet_pools=True)
        _check(name, path, session.inputs, session.spatial, session.outputs, outputs[name], sizes[name])
        nets[name] = _runner(session, list(outputs[name]))
        description = {**session.description, "threads": threads}
    return nets, description


def _runner(session: NamedSession, names: list[str]) -> Net:
    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run({IMAGE_INPUT: batch}, names)

    return run


def _check(net, path, inputs: list[str], spatial: list, got: list[str], expected: tuple[str, ...], size) -> None:
    if inputs != [IMAGE_INPUT] or sorted(got) != sorted(expected) or spatial != [size, size]:
        wanted = "H x W" if size is None else f"{size} x {size}"
        raise ValueError(
            f"{net} ({path}): inputs {inputs} of spatial shape {spatial} -> outputs {got}, expected "
            f"[{IMAGE_INPUT!r}] ({wanted}) -> {list(expected)}; pass the {net}.onnx made by "
            f"`pdsn.export.detector_export.convert_mtcnn`"
        )
