"""The device-memory, stream and graph layer of the GPU runtime (needs an NVIDIA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu import has_gpu

from pdsn.runtime import cuda_memory as cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu(), reason="needs an NVIDIA GPU")]


def test_pinned_round_trip_through_device_memory():
    data = np.arange(4096, dtype=np.float32).reshape(64, 64)
    resources = cuda.ResourceStack()
    try:
        stream = resources.own(cuda.Stream())
        host_in = resources.own(cuda.PinnedArray(data.shape, np.float32))
        host_out = resources.own(cuda.PinnedArray(data.shape, np.float32))
        device = resources.own(cuda.DeviceBuffer(data.nbytes))
        host_in.array[:] = data
        stream.copy_to_device(device.ptr, host_in.ptr, data.nbytes)
        stream.copy_to_host(host_out.ptr, device.ptr, data.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(host_out.array, data)
    finally:
        resources.close()


def test_a_captured_graph_replays_the_copies_with_new_data():
    resources = cuda.ResourceStack()
    try:
        stream = resources.own(cuda.Stream())
        host_in = resources.own(cuda.PinnedArray((256,), np.int32))
        host_out = resources.own(cuda.PinnedArray((256,), np.int32))
        device = resources.own(cuda.DeviceBuffer(1024))

        def enqueue(_handle: int) -> None:
            stream.copy_to_device(device.ptr, host_in.ptr, 1024)
            stream.copy_to_host(host_out.ptr, device.ptr, 1024)

        graph = resources.own(cuda.CudaGraph(stream, enqueue))
        for value in (3, 7):
            host_in.array[:] = value
            graph.launch()
            stream.synchronize()
            assert (host_out.array == value).all()
    finally:
        resources.close()


def test_repeated_open_and_close_does_not_leak_device_memory():
    def cycle() -> None:
        with cuda.DeviceBuffer(64 << 20), cuda.PinnedArray((1 << 20,), np.uint8), cuda.Stream(), cuda.Event():
            pass

    cycle()
    free_before, _ = cuda.memory_info()
    for _ in range(20):
        cycle()
    free_after, _ = cuda.memory_info()
    assert abs(free_before - free_after) < 8 << 20


def test_out_of_memory_is_a_clear_error():
    _, total = cuda.memory_info()
    with pytest.raises(cuda.DeviceOutOfMemoryError, match="MiB free of"):
        cuda.DeviceBuffer(4 * total)


def test_a_graph_whose_work_is_the_fdm_kernel_matches_the_reference():
    """The layer the TensorRT backend uses, with the fused kernel as the captured work."""
    from factories import random_binary_dictionary

    from pdsn.kernels.fdm_nvrtc import FdmKernel
    from pdsn.kernels.fdm_pack import pack_dictionary, pack_occlusion
    from pdsn.kernels.fdm_reference import fdm_gather_mul

    shape, batch = (512, 7, 6), 8
    elements = int(np.prod(shape))
    rng = np.random.default_rng(5)
    dictionary = random_binary_dictionary(shape, seed=5)
    packed = pack_dictionary(dictionary)
    kernel = FdmKernel(cuda.require_gpu(0))
    resources = cuda.ResourceStack()
    try:
        stream = resources.own(cuda.Stream())
        host = {
            "features": resources.own(cuda.PinnedArray((batch, elements), np.float32)),
            "occlusion": resources.own(cuda.PinnedArray((batch,), np.uint32)),
            "out": resources.own(cuda.PinnedArray((batch, elements), np.float32)),
        }
        words = resources.own(cuda.PinnedArray(packed.shape, np.uint32))
        words.array[:] = packed
        device = {name: resources.own(cuda.DeviceBuffer(array.nbytes)) for name, array in host.items()}
        table = resources.own(cuda.DeviceBuffer(packed.nbytes))
        stream.copy_to_device(table.ptr, words.ptr, packed.nbytes)

        def enqueue(handle: int) -> None:
            stream.copy_to_device(device["features"].ptr, host["features"].ptr, host["features"].nbytes)
            stream.copy_to_device(device["occlusion"].ptr, host["occlusion"].ptr, host["occlusion"].nbytes)
            kernel.launch(
                "float32",
                device["features"].ptr,
                device["occlusion"].ptr,
                table.ptr,
                device["out"].ptr,
                batch,
                elements,
                packed.shape[1],
                25,
                handle,
            )
            stream.copy_to_host(host["out"].ptr, device["out"].ptr, host["out"].nbytes)

        graph = resources.own(cuda.CudaGraph(stream, enqueue))
        for _ in range(2):  # replayed with new data: the graph reads the pinned buffers each time
            features = rng.normal(size=(batch, *shape)).astype(np.float32)
            occlusion = (rng.random((batch, 25)) < 0.2).astype(np.float32)
            occlusion[0], occlusion[1] = 0, 1
            host["features"].array[:] = features.reshape(batch, -1)
            host["occlusion"].array[:] = pack_occlusion(occlusion)
            graph.launch()
            stream.synchronize()
            expected = fdm_gather_mul(features, occlusion, dictionary).reshape(batch, -1)
            np.testing.assert_array_equal(host["out"].array, expected)
    finally:
        resources.close()
        kernel.close()
