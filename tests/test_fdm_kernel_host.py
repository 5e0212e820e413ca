"""The CUDA kernel's own code, compiled as host C++ (g++ and tests/cuda_host_shim.h), against the numpy reference.

This runs ``fdm_kernel.cu`` itself, launch loop included, on any machine with g++; the GPU test in
test_fdm_kernel.py checks the same source on a real device.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from factories import random_binary_dictionary

from pdsn.kernels.fdm_nvrtc import MAX_BLOCKS, THREADS_PER_BLOCK, kernel_source
from pdsn.kernels.fdm_pack import pack_dictionary, pack_occlusion, packed_words
from pdsn.kernels.fdm_reference import fdm_gather_mul

SHIM = Path(__file__).with_name("cuda_host_shim.h")
# 512x7x6 = 21504 elements (672 whole words); 37x7x6 = 1554, which ends in a partial word.
SHAPES = [(512, 7, 6), (37, 7, 6)]
DRIVER = r"""
#include "cuda_host_shim.h"
#include "fdm_kernel.cu"

extern "C" void launch_f32(unsigned int blocks, unsigned int threads, const float* features,
                           const unsigned int* occlusion, const unsigned int* dictionary,
                           int batch, int elements, int words_per_row, int cells, float* out) {
    host_launch(blocks, threads, [&] {
        fdm_gather_mul_f32(features, occlusion, dictionary, batch, elements, words_per_row, cells, out);
    });
}

extern "C" void launch_f16(unsigned int blocks, unsigned int threads, const unsigned short* features,
                           const unsigned int* occlusion, const unsigned int* dictionary,
                           int batch, int elements, int words_per_row, int cells, unsigned short* out) {
    host_launch(blocks, threads, [&] {
        fdm_gather_mul_f16(features, occlusion, dictionary, batch, elements, words_per_row, cells, out);
    });
}
"""


class HostFdmKernel:
    """FdmKernel's ``launch`` over the host-compiled kernel: the same arguments, with host pointers.

    ``stream`` is accepted and ignored (the host runs the launch at once); ``blocks`` and ``threads``
    override the launch shape that FdmKernel.launch computes.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._functions = {"float32": library.launch_f32, "float16": library.launch_f16}
        for function in self._functions.values():
            function.argtypes = [ctypes.c_uint] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_void_p]
            function.restype = None

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
        stream: object = 0,
        blocks: int | None = None,
        threads: int = THREADS_PER_BLOCK,
    ) -> None:
        if blocks is None:
            blocks = max(1, min(MAX_BLOCKS, -(-batch * elements // threads)))
        self._functions[dtype](
            blocks, threads, features, occlusion, packed_dictionary, batch, elements, words_per_row, cells, out
        )


def build_host_kernel(directory: Path) -> HostFdmKernel:
    """Compile fdm_kernel.cu with the shim and a serial launch loop into a shared library in ``directory``."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed: the kernel cannot be compiled as host C++ here")
    (directory / "fdm_kernel.cu").write_text(kernel_source())
    (directory / "driver.cpp").write_text(DRIVER)
    library = directory / "libfdm_host.so"
    command = [compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    command += [f"-I{SHIM.parent}", f"-I{directory}", str(directory / "driver.cpp"), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"g++ could not compile fdm_kernel.cu as host C++:\n{result.stderr}"
    return HostFdmKernel(ctypes.CDLL(str(library)))


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory) -> HostFdmKernel:
    return build_host_kernel(tmp_path_factory.mktemp("fdm_host"))


def _launch(
    kernel: HostFdmKernel,
    features: np.ndarray,
    occlusion: np.ndarray,
    dictionary: np.ndarray,
    out: np.ndarray | None = None,
    **shape: int,
) -> np.ndarray:
    """Pack the inputs as the runtime does and run the kernel over ``features`` into ``out``."""
    words = pack_occlusion(occlusion)
    packed = np.ascontiguousarray(pack_dictionary(dictionary))
    out = np.empty_like(features) if out is None else out
    kernel.launch(
        features.dtype.name,
        features.ctypes.data,
        words.ctypes.data,
        packed.ctypes.data,
        out.ctypes.data,
        features.shape[0],
        features[0].size,
        packed_words(features[0].size),
        dictionary.shape[0],
        **shape,
    )
    return out


def _occlusion(pattern: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    occlusion = np.zeros((batch, 25), dtype=np.float32)
    if pattern == "one":  # every single cell in turn; the last one (bit 24) at batch 1
        occlusion[np.arange(batch), (np.arange(batch) + 24) % 25] = 1
    elif pattern == "all":
        occlusion[:] = 1
    elif pattern == "random":
        occlusion = (rng.random((batch, 25)) < 0.3).astype(np.float32)
    return occlusion


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("pattern", ["none", "one", "all", "random"])
def test_host_kernel_equals_the_reference(host_kernel, pattern, batch, dtype, shape):
    rng = np.random.default_rng(batch)
    dictionary = random_binary_dictionary(shape, seed=batch)
    features = rng.normal(size=(batch, *shape)).astype(dtype)
    occlusion = _occlusion(pattern, batch, rng)
    out = _launch(host_kernel, features, occlusion, dictionary)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, fdm_gather_mul(features, occlusion, dictionary))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_a_grid_smaller_than_the_data_strides_over_all_of_it(host_kernel, shape):
    rng = np.random.default_rng(3)
    dictionary = random_binary_dictionary(shape, seed=3)
    features = rng.normal(size=(5, *shape)).astype(np.float32)
    occlusion = _occlusion("random", 5, rng)
    out = _launch(host_kernel, features, occlusion, dictionary, blocks=3, threads=64)
    np.testing.assert_array_equal(out, fdm_gather_mul(features, occlusion, dictionary))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_zeros_infinities_and_nan_come_out_as_the_multiply_gives_them(host_kernel, dtype):
    """Dropped elements become a zero of the feature's sign, or NaN for an infinite or NaN feature."""
    shape = (37, 7, 6)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-7, -1e-7, 65504.0, -2.5], dtype=dtype)
    features = np.resize(special, (2, *shape))
    dictionary = random_binary_dictionary(shape, seed=5, keep=0.5)
    occlusion = _occlusion("random", 2, np.random.default_rng(5))
    out = _launch(host_kernel, features, occlusion, dictionary)
    with np.errstate(invalid="ignore"):  # inf * 0 in the reference
        expected = fdm_gather_mul(features, occlusion, dictionary)
    np.testing.assert_array_equal(out, expected)
    numbers = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(out[numbers]), np.signbit(expected[numbers]))


def test_out_may_be_the_features_buffer(host_kernel):
    rng = np.random.default_rng(9)
    dictionary = random_binary_dictionary(SHAPES[0], seed=9)
    features = rng.normal(size=(4, *SHAPES[0])).astype(np.float16)
    occlusion = _occlusion("random", 4, rng)
    expected = fdm_gather_mul(features, occlusion, dictionary)
    out = _launch(host_kernel, features, occlusion, dictionary, out=features)
    assert out is features
    np.testing.assert_array_equal(features, expected)
