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
