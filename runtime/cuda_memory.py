"""CUDA device memory, pinned host memory, streams, events and graphs over cuda-python.

Every resource is an object with ``close()`` (idempotent) and context-manager use; a
``ResourceStack`` owns a backend's resources and releases them in reverse order of creation, so
graphs go before the buffers they read, buffers before the streams they were used on. Errors
name the CUDA call and the CUDA error.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np

from pdsn.errors import PdsnError
from pdsn.runtime.backends.base import BackendUnavailableError

INSTALL_HINT = "pip install cuda-python (NVIDIA's CUDA bindings; a GPU driver is needed to run)"


class CudaError(PdsnError, RuntimeError):
    """A CUDA runtime call failed."""


class DeviceOutOfMemoryError(CudaError, MemoryError):
    """The GPU has too little free memory for what was asked."""


def cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise BackendUnavailableError(f"the GPU runtime needs cuda-python: {INSTALL_HINT}") from None
    return runtime


def call(name: str, *args: Any) -> Any:
    """``cudart.<name>(*args)``, raising on failure; returns the call's value (None, one, or a tuple)."""
    runtime = cudart()
    result = getattr(runtime, name)(*args)
    error, values = result[0], result[1:]
    if int(error) != 0:
        message = f"{name} failed: {error_name(error)}"
        if int(error) == int(runtime.cudaError_t.cudaErrorMemoryAllocation):
            free, total = memory_info()
            raise DeviceOutOfMemoryError(
                f"{message}; the GPU has {free / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB. Use a "
                f"smaller max batch (rebuild the engine with a smaller --batch MAX) or free GPU memory"
            )
        raise CudaError(message)
    return None if not values else values[0] if len(values) == 1 else values


def error_name(error: Any) -> str:
    status, name = cudart().cudaGetErrorName(error)
    return name.decode() if int(status) == 0 else str(error)


def memory_info() -> tuple[int, int]:
    status, free, total = cudart().cudaMemGetInfo()
    return (int(free), int(total)) if int(status) == 0 else (0, 0)


def require_gpu(device: int = 0) -> str:
    """Select ``device`` and return its compute capability ("8.9"); BackendUnavailableError if none."""
    runtime = cudart()
    status, count = runtime.cudaGetDeviceCount()
    if int(status) != 0 or count == 0:
        reason = error_name(status) if int(status) != 0 else "no device found"
        raise BackendUnavailableError(
            f"no usable NVIDIA GPU here ({reason}); use device='cpu' with the onnxruntime or openvino "
            f"backend, or run on a machine with an NVIDIA GPU and driver"
        )
    if device >= count:
        raise BackendUnavailableError(f"GPU {device} asked for, but this machine has {count}")
    call("cudaSetDevice", device)
    attribute = runtime.cudaDeviceAttr
    major = call("cudaDeviceGetAttribute", attribute.cudaDevAttrComputeCapabilityMajor, device)
    minor = call("cudaDeviceGetAttribute", attribute.cudaDevAttrComputeCapabilityMinor, device)
    return f"{major}.{minor}"


class _Resource:
    _released = False

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceBuffer(_Resource):
    """``nbytes`` of device memory at ``ptr``."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(call("cudaMalloc", nbytes))

    def _release(self) -> None:
        call("cudaFree", self.ptr)


class PinnedArray(_Resource):
    """A numpy array in page-locked host memory (``.array``), so copies to the GPU run async at full speed."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self.ptr = int(call("cudaMallocHost", self.nbytes))
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)

    def _release(self) -> None:
        del self.array  # drop this view of the memory before it is freed
        call("cudaFreeHost", self.ptr)


class Stream(_Resource):
    """A non-blocking CUDA stream, or a caller's stream (``handle``), which is never destroyed here."""

    def __init__(self, handle: int | None = None) -> None:
        self.owned = handle is None
        if handle is None:
            runtime = cudart()
            self._stream = call("cudaStreamCreateWithFlags", runtime.cudaStreamNonBlocking)
        else:
            self._stream = cudart().cudaStream_t(int(handle))
        self.handle = int(self._stream)

    def copy_to_device(self, device_ptr: int, host_ptr: int, nbytes: int) -> None:
        call(
            "cudaMemcpyAsync",
            device_ptr,
            host_ptr,
            nbytes,
            cudart().cudaMemcpyKind.cudaMemcpyHostToDevice,
            self._stream,
        )

    def copy_to_host(self, host_ptr: int, device_ptr: int, nbytes: int) -> None:
        call(
            "cudaMemcpyAsync",
            host_ptr,
            device_ptr,
            nbytes,
            cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost,
            self._stream,
        )

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", self._stream)

    def _release(self) -> None:
        if self.owned:
            call("cudaStreamDestroy", self._stream)


class Event(_Resource):
    """A timing-free CUDA event, for ordering one stream after another."""

    def __init__(self) -> None:
        runtime = cudart()
        self._event = call("cudaEventCreateWithFlags", runtime.cudaEventDisableTiming)

    def record(self, stream: Stream) -> None:
        call("cudaEventRecord", self._event, stream._stream)

    def make_wait(self, stream: Stream) -> None:
        """Work queued on ``stream`` after this call waits for the last ``record``."""
        call("cudaStreamWaitEvent", stream._stream, self._event, 0)

    def synchronize(self) -> None:
        call("cudaEventSynchronize", self._event)

    def _release(self) -> None:
        call("cudaEventDestroy", self._event)


class CudaGraph(_Resource):
    """The work ``enqueue(stream)`` puts on ``stream``, captured once and replayed with one launch."""

    def __init__(self, stream: Stream, enqueue: Callable[[int], object]) -> None:
        runtime = cudart()
        call("cudaStreamBeginCapture", stream._stream, runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            enqueue(stream.handle)
        finally:
            graph = call("cudaStreamEndCapture", stream._stream)
        try:
            self._exec = call("cudaGraphInstantiate", graph, 0)
        finally:
            call("cudaGraphDestroy", graph)
        self._stream = stream

    def launch(self) -> None:
        call("cudaGraphLaunch", self._exec, self._stream._stream)

    def _release(self) -> None:
        call("cudaGraphExecDestroy", self._exec)


class ResourceStack:
    """Owns resources; ``close()`` releases them in reverse order, even if one release fails."""

    def __init__(self) -> None:
        self._stack = ExitStack()

    def own(self, resource):
        self._stack.callback(resource.close)
        return resource

    def close(self) -> None:
        self._stack.close()
