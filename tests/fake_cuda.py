"""A stand-in for cuda-python's ``cuda.bindings.runtime``, for CPU-only tests of the GPU runtime.

"Device" memory is host memory, so a stand-in engine can read and write it at the addresses bound
to it. Every stream operation runs at once (as if each stream were always idle), except on a stream
being captured, where it is recorded into the graph and runs at each launch.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import types
from collections.abc import Callable


class _Error(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900


class _Handle:
    """A stream, event or graph handle: ``int()`` gives its number, as cuda-python's do."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __int__(self) -> int:
        return self.number


class FakeCudaRuntime(types.SimpleNamespace):
    """The calls of ``cuda.bindings.runtime`` that ``pdsn.runtime.cuda_memory`` makes, each returning
    ``(error, *values)``; ``memory`` holds every live allocation by address."""

    cudaError_t = _Error
    cudaStream_t = _Handle
    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor=75, cudaDevAttrComputeCapabilityMinor=76)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, compute_capability: tuple[int, int] = (9, 0), capture: bool = True) -> None:
        super().__init__()
        self.compute_capability = compute_capability
        self.capture = capture
        self.memory: dict[int, ctypes.Array] = {}
        self.captures: dict[int, list[Callable[[], None]]] = {}
        self.launches = 0
        self._numbers = itertools.count(1)

    def enqueue(self, stream: object, work: Callable[[], None]) -> None:
        """Run ``work`` on ``stream``: now, or at each launch of the graph being captured there."""
        capture = self.captures.get(int(stream))
        if capture is None:
            work()
        else:
            capture.append(work)

    def cudaGetErrorName(self, error: object) -> tuple:
        return 0, _Error(int(error)).name.encode()

    def cudaMemGetInfo(self) -> tuple:
        return 0, 1 << 30, 2 << 30

    def cudaGetDeviceCount(self) -> tuple:
        return 0, 1

    def cudaSetDevice(self, device: int) -> tuple:
        return (0,)

    def cudaDeviceGetAttribute(self, attribute: int, device: int) -> tuple:
        major = attribute == self.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor
        return 0, self.compute_capability[0 if major else 1]

    def cudaMalloc(self, nbytes: int) -> tuple:
        buffer = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, address: int) -> tuple:
        del self.memory[address]
        return (0,)

    cudaFreeHost = cudaFree

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple:
        return 0, _Handle(next(self._numbers))

    def cudaMemcpyAsync(self, destination: int, source: int, nbytes: int, kind: int, stream: object) -> tuple:
        self.enqueue(stream, lambda: ctypes.memmove(destination, source, nbytes))
        return (0,)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple:
        return 0, _Handle(next(self._numbers))

    def cudaStreamBeginCapture(self, stream: object, mode: int) -> tuple:
        if not self.capture:
            return (_Error.cudaErrorStreamCaptureUnsupported,)
        self.captures[int(stream)] = []
        return (0,)

    def cudaStreamEndCapture(self, stream: object) -> tuple:
        return 0, self.captures.pop(int(stream))

    def cudaGraphInstantiate(self, graph: list, flags: int) -> tuple:
        return 0, list(graph)

    def cudaGraphLaunch(self, graph: list, stream: object) -> tuple:
        self.launches += 1
        for work in graph:
            self.enqueue(stream, work)
        return (0,)

    def _done(self, *args: object) -> tuple:
        return (0,)

    cudaStreamSynchronize = cudaStreamDestroy = cudaEventRecord = cudaStreamWaitEvent = _done
    cudaEventSynchronize = cudaEventDestroy = cudaGraphDestroy = cudaGraphExecDestroy = _done


def install_fake_cuda(monkeypatch, capture: bool = True) -> FakeCudaRuntime:
    """Route ``pdsn.runtime.cuda_memory`` to a fresh stand-in runtime (``capture``: whether streams
    can be captured into graphs) and return it."""
    runtime = FakeCudaRuntime(capture=capture)
    monkeypatch.setattr("pdsn.runtime.cuda_memory.cudart", lambda: runtime)
    return runtime
