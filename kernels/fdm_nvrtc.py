"""The fused FDM kernel compiled at run time with NVRTC, for the runtime's own GPU work.

``compile_ptx`` needs only NVRTC (no GPU): it is what CI checks. ``FdmKernel`` loads the PTX into
the current CUDA context and launches it on device pointers that the caller owns (features in
the layout of ``fdm_pack``). Both import cuda-python lazily, so importing this module needs numpy
only.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from pdsn.errors import PdsnError

KERNEL_FILE = "fdm_kernel.cu"
KERNELS = {"float32": "fdm_gather_mul_f32", "float16": "fdm_gather_mul_f16"}
INSTALL_HINT = "pip install cuda-bindings nvidia-cuda-nvrtc (CUDA 13; Python 3.11 or later)"
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535


class KernelCompileError(PdsnError, RuntimeError):
    """NVRTC rejected the kernel source."""


def kernel_source() -> str:
    return resources.files("pdsn.kernels").joinpath(KERNEL_FILE).read_text(encoding="utf-8")


def compile_ptx(compute_capability: str = "7.5") -> bytes:
    """PTX of ``fdm_kernel.cu`` for ``compute_capability`` ("8.6"); newer GPUs JIT it from there."""
    nvrtc = _cuda("nvrtc")
    major, minor = compute_capability.split(".")
    program = _check(
        nvrtc, nvrtc.nvrtcCreateProgram(kernel_source().encode(), KERNEL_FILE.encode(), 0, [], []), "nvrtcCreateProgram"
    )
    try:
        options = [f"--gpu-architecture=compute_{major}{minor}".encode(), b"--std=c++17"]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "log size")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(program, log)
            raise KernelCompileError(
                f"NVRTC could not compile {KERNEL_FILE} for compute capability {compute_capability}:\n"
                f"{log.decode(errors='replace').strip()}"
            )
        ptx = b" " * _check(nvrtc, nvrtc.nvrtcGetPTXSize(program), "PTX size")
        nvrtc.nvrtcGetPTX(program, ptx)
        return ptx.rstrip(b"\0")
    finally:
        nvrtc.nvrtcDestroyProgram(program)


class FdmKernel:
    """The kernel loaded into the current CUDA context (which the caller has made current)."""

    def __init__(self, compute_capability: str) -> None:
        self._driver = _cuda("driver")
        ptx = compile_ptx(compute_capability)
        self._module = _check(self._driver, self._driver.cuModuleLoadData(ptx + b"\0"), "cuModuleLoadData")
        self._functions = {
            dtype: _check(self._driver, self._driver.cuModuleGetFunction(self._module, name.encode()), name)
            for dtype, name in KERNELS.items()
        }

    def launch(
        self,
        dtype: str,
        features: int,
        occlusion: int,
        packed_dictionary: int,
        out: int,
        batch: int,
        elements: int,
        words_per_row: int,
        cells: int,
        stream: Any = 0,
    ) -> None:
        """Enqueue ``out = FdmGatherMul(features, occlusion words, packed dictionary)`` on ``stream``.

        Pointers are device addresses: features and out hold ``batch * elements`` values of
        ``dtype`` ("float32" or "float16"), occlusion ``batch`` uint32 words, the dictionary
        ``cells * words_per_row`` uint32 words.
        """
        if dtype not in self._functions:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(self._functions)}")
        values = [np.array([p], dtype=np.uint64) for p in (features, occlusion, packed_dictionary)]
        values += [np.array([n], dtype=np.int32) for n in (batch, elements, words_per_row, cells)]
        values.append(np.array([out], dtype=np.uint64))
        pointers = np.array([v.ctypes.data for v in values], dtype=np.uint64)
        blocks = max(1, min(MAX_BLOCKS, -(-batch * elements // THREADS_PER_BLOCK)))
        _check(
            self._driver,
            self._driver.cuLaunchKernel(
                self._functions[dtype], blocks, 1, 1, THREADS_PER_BLOCK, 1, 1, 0, stream, pointers.ctypes.data, 0
            ),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        self._driver.cuModuleUnload(self._module)


def _cuda(name: str) -> Any:
    try:
        if name == "nvrtc":
            from cuda.bindings import nvrtc as module
        else:
            from cuda.bindings import driver as module
    except ImportError:
        raise RuntimeError(f"the fused FDM kernel needs cuda-python's {name} bindings: {INSTALL_HINT}") from None
    return module


def _check(module: Any, result: tuple, what: str) -> Any:
    """cuda-python returns ``(status, value...)``; raise on a failed status, else return the value."""
    status, *values = result
    if int(status) != 0:
        raise RuntimeError(f"{module.__name__}.{what} failed: {status!r}")
    return values[0] if len(values) == 1 else values
