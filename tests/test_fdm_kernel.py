"""The fused FDM kernel: bit packing, the packed algorithm against the reference, CUDA compilation."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from factories import random_binary_dictionary

from pdsn.kernels.fdm_pack import (
    pack_dictionary,
    pack_occlusion,
    packed_gather_mul,
    packed_words,
    unpack_dictionary,
)
from pdsn.kernels.fdm_reference import fdm_gather_mul

FEATURES = (512, 7, 6)
ARCHITECTURES = ("75", "86", "89", "90")


def _occlusion_patterns(batch: int, rng: np.random.Generator) -> np.ndarray:
    occlusion = (rng.random((batch, 25)) < 0.2).astype(np.float32)
    occlusion[0] = 0  # none
    if batch > 1:
        occlusion[1] = 1  # all 25
        occlusion[2] = 0
        occlusion[2, 24] = 1  # one cell, the last bit
    return occlusion


def test_dictionary_packs_to_672_words_per_row_in_little_bit_order():
    dictionary = random_binary_dictionary(FEATURES, seed=4)
    packed = pack_dictionary(dictionary)
    assert packed.shape == (25, 672) and packed.dtype == np.uint32
    flat = dictionary.reshape(25, -1)
    for cell, element in [(0, 0), (3, 31), (7, 32), (24, 21503), (12, 1234)]:
        assert (packed[cell, element // 32] >> (element % 32)) & 1 == flat[cell, element]
    np.testing.assert_array_equal(unpack_dictionary(packed, flat.shape[1]), flat)


def test_rows_whose_length_is_not_a_multiple_of_32_are_padded_with_zeros():
    dictionary = np.ones((25, 5, 3, 3), dtype=np.float32)
    packed = pack_dictionary(dictionary)
    assert packed.shape == (25, packed_words(45)) == (25, 2)
    assert packed[0, 0] == 0xFFFFFFFF and packed[0, 1] == (1 << 13) - 1


def test_occlusion_words_set_one_bit_per_occluded_cell():
    occlusion = np.zeros((3, 25), dtype=np.float32)
    occlusion[1, [0, 10, 24]] = 1
    occlusion[2] = 1
    np.testing.assert_array_equal(pack_occlusion(occlusion), [0, (1 << 0) | (1 << 10) | (1 << 24), (1 << 25) - 1])


@pytest.mark.parametrize("batch", [1, 3, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_packed_algorithm_equals_the_reference(batch, dtype):
    rng = np.random.default_rng(batch)
    dictionary = random_binary_dictionary(FEATURES, seed=batch)
    features = rng.normal(size=(batch, *FEATURES)).astype(dtype)
    occlusion = _occlusion_patterns(batch, rng)
    expected = fdm_gather_mul(features, occlusion, dictionary)
    actual = packed_gather_mul(features, pack_occlusion(occlusion), pack_dictionary(dictionary))
    assert actual.dtype == dtype
    np.testing.assert_array_equal(actual, expected)


def test_packed_algorithm_on_edge_dictionaries():
    features = np.arange(2 * 45, dtype=np.float32).reshape(2, 5, 3, 3) - 40
    occlusion = np.ones((2, 25), dtype=np.float32)
    occlusion[1] = 0
    for dictionary in (np.zeros((25, 5, 3, 3)), np.ones((25, 5, 3, 3))):
        actual = packed_gather_mul(features, pack_occlusion(occlusion), pack_dictionary(dictionary))
        np.testing.assert_array_equal(actual, fdm_gather_mul(features, occlusion, dictionary.astype(np.float32)))
        np.testing.assert_array_equal(actual[1], features[1])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_dictionary(np.full((25, 4, 2, 2), 0.5))
    with pytest.raises(ValueError, match="K <= 32"):
        pack_occlusion(np.zeros((2, 33)))
    with pytest.raises(ValueError, match=r"expected \(K, 672\)"):
        unpack_dictionary(np.zeros((25, 671), dtype=np.uint32), 21504)
    with pytest.raises(ValueError, match="do not fit"):
        packed_gather_mul(np.zeros((2, *FEATURES)), np.zeros(3, dtype=np.uint32), np.zeros((25, 672), dtype=np.uint32))


def test_nvcc_compiles_the_kernel_for_every_rtx_and_datacentre_architecture(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    from pdsn.kernels.fdm_nvrtc import kernel_source

    source = tmp_path / "fdm_kernel.cu"
    source.write_text(kernel_source())
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
    result = subprocess.run(
        [nvcc, "-c", *gencode, "-Werror", "all-warnings", str(source), "-o", str(tmp_path / "fdm.o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fdm.o").stat().st_size > 0


@pytest.mark.parametrize("capability", ["7.5", "8.6", "8.9", "9.0", "12.0"])
def test_nvrtc_compiles_ptx_without_a_gpu(capability):
    pytest.importorskip("cuda.bindings.nvrtc")
    from pdsn.kernels.fdm_nvrtc import KERNELS, compile_ptx

    try:
        ptx = compile_ptx(capability).decode()
    except RuntimeError as error:
        if "nvrtc" in str(error).lower() and "load" in str(error).lower():
            pytest.skip(f"NVRTC library not installed: {error}")
        raise
    assert f".target sm_{capability.replace('.', '')}" in ptx
    assert all(f".entry {name}(" in ptx for name in KERNELS.values())


def _gpu():
    """cuda-python's driver with a primary context current on GPU 0, or a skip."""
    driver = pytest.importorskip("cuda.bindings.driver")
    try:
        (status,) = driver.cuInit(0)
    except RuntimeError as error:  # cuda-python cannot load the driver library
        pytest.skip(f"no NVIDIA driver here: {error}")
    status_count, count = driver.cuDeviceGetCount() if int(status) == 0 else (status, 0)
    if int(status) != 0 or int(status_count) != 0 or count == 0:
        pytest.skip("no NVIDIA GPU here")
    _, device = driver.cuDeviceGet(0)
    _, context = driver.cuDevicePrimaryCtxRetain(device)
    driver.cuCtxSetCurrent(context)
    _, major = driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
    )
    _, minor = driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
    )
    return driver, f"{major}.{minor}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernel_on_the_gpu_equals_the_reference(dtype):
    driver, capability = _gpu()
    from pdsn.kernels.fdm_nvrtc import FdmKernel

    rng = np.random.default_rng(7)
    dictionary = random_binary_dictionary(FEATURES, seed=7)
    features = rng.normal(size=(256, *FEATURES)).astype(dtype)
    occlusion = _occlusion_patterns(256, rng)
    host = {"features": features, "occlusion": pack_occlusion(occlusion), "dictionary": pack_dictionary(dictionary)}
    device = {}
    for name, array in {**host, "out": np.empty_like(features)}.items():
        _, device[name] = driver.cuMemAlloc(array.nbytes)
        if name != "out":
            driver.cuMemcpyHtoD(device[name], np.ascontiguousarray(array).ctypes.data, array.nbytes)
    kernel = FdmKernel(capability)
    try:
        kernel.launch(
            np.dtype(dtype).name,
            int(device["features"]),
            int(device["occlusion"]),
            int(device["dictionary"]),
            int(device["out"]),
            256,
            features[0].size,
            672,
            25,
        )
        driver.cuCtxSynchronize()
        out = np.empty_like(features)
        driver.cuMemcpyDtoH(out.ctypes.data, device["out"], out.nbytes)
    finally:
        kernel.close()
        for pointer in device.values():
            driver.cuMemFree(pointer)
    np.testing.assert_array_equal(out, fdm_gather_mul(features, occlusion, dictionary))
