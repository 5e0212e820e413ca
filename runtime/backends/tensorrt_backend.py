"""TensorRT and TensorRT-RTX engines on an NVIDIA GPU, with everything resident on the device.

At load: the engine is checked against what is installed (flavour, version, GPU) before it is
deserialized; device buffers are allocated once for the profile's largest batch, with pinned host
buffers beside them; the dictionary is uploaded once and bound with ``set_tensor_address`` for
every call. Per call: the uint8 images (4x smaller than float) and the occlusion rows are copied
in on an upload stream (the application's, when it hands one over), the engine runs on a compute
stream, and the embeddings are copied back on a download stream, with events ordering the three.
Two slots (execution context, buffers, graphs each) alternate, and ``start`` returns once a batch
is queued, so the batcher starts the next batch while this one computes: its uploads do not queue
behind this batch's download, which waits for the compute. The engine runs as a CUDA graph per batch bucket (powers of two
within the profile), captured after one warm-up enqueue; a bucket whose capture fails runs with
``execute_async_v3`` instead. A batch is padded up to its bucket; the padded rows are never read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pdsn.kernels.tensorrt_modules import import_tensorrt
from pdsn.model.bundle_format import DICTIONARY_INPUT, EMBEDDING_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.runtime import cuda_memory as cuda
from pdsn.runtime.backends.base import Backend, BackendUnavailableError
from pdsn.runtime.backends.engines import check_engine

_log = logging.getLogger(__name__)


class _Slot:
    """One in-flight batch: its own execution context, device and pinned buffers, and graphs."""

    def __init__(
        self,
        engine: Any,
        resources: cuda.ResourceStack,
        contract: ModelContract,
        max_batch: int,
        dictionary_ptr: int | None,
        output_size: int,
    ) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise cuda.DeviceOutOfMemoryError(
                "TensorRT could not create an execution context (its activation memory did not fit on the GPU)"
            )
        image_shape = (max_batch, *contract.image_shape)
        image_dtype = np.uint8 if contract.image_layout == "nhwc-uint8" else np.float32
        self.images = resources.own(cuda.PinnedArray(image_shape, image_dtype))
        self.occlusion = resources.own(cuda.PinnedArray((max_batch, 25), np.float32))
        self.output = resources.own(cuda.PinnedArray((max_batch, output_size), np.float32))
        self.device = {
            IMAGE_INPUT: resources.own(cuda.DeviceBuffer(self.images.nbytes)),
            OCCLUSION_INPUT: resources.own(cuda.DeviceBuffer(self.occlusion.nbytes)),
            EMBEDDING_OUTPUT: resources.own(cuda.DeviceBuffer(self.output.nbytes)),
        }
        for name, buffer in self.device.items():
            self.context.set_tensor_address(name, buffer.ptr)
        if dictionary_ptr is not None:
            self.context.set_tensor_address(DICTIONARY_INPUT, dictionary_ptr)
        self.inputs_ready = resources.own(cuda.Event())
        self.computed = resources.own(cuda.Event())
        self.downloaded = resources.own(cuda.Event())
        self.graphs: dict[int, cuda.CudaGraph | None] = {}
        self.shape_set: int | None = None


class TensorRTBackend(Backend):
    """Runs a bundle's TensorRT or TensorRT-RTX engine; see the module docstring for the data path."""

    pipelined = True

    def __init__(
        self,
        engine_path: str,
        entry: dict,
        dictionary: np.ndarray,
        contract: ModelContract,
        device: str = "cuda",
        gpu: int = 0,
        cuda_graphs: bool = True,
        cuda_stream: Any = None,
        cuda_context: Any = None,
    ) -> None:
        if device != "cuda":
            raise ValueError(f"the {entry['flavour']} backend runs on device='cuda', not {device!r}")
        self.name = entry["flavour"]
        trt = import_tensorrt(self.name, "Runtime")
        check_engine(entry, None if trt is None else str(trt.__version__), None)
        self._entry = entry
        self._application_context = cuda_context
        self._resources = cuda.ResourceStack()
        try:
            with self._current_context():
                self._load(trt, Path(engine_path), dictionary, contract, gpu, cuda_graphs, cuda_stream)
        except BaseException:
            self._resources.close()
            raise

    def _load(
        self,
        trt: Any,
        engine_path: Path,
        dictionary: np.ndarray,
        contract: ModelContract,
        gpu: int,
        cuda_graphs: bool,
        cuda_stream: Any,
    ) -> None:
        self.compute_capability = cuda.require_gpu(gpu)
        check_engine(self._entry, str(trt.__version__), self.compute_capability)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(
                f"{self.name} {trt.__version__} could not load engine {engine_path.name} on this GPU "
                f"({self.compute_capability}); rebuild it with `pdsn build`"
            )
        profile = self._entry["profile"]
        self.min_batch, self.max_batch = profile["min"], profile["max"]
        self.preferred_batch_sizes = tuple(b for b in _powers_of_two(self.max_batch) if b >= self.min_batch)
        self._use_graphs = cuda_graphs
        self._uploads = self._resources.own(cuda.Stream(_stream_handle(cuda_stream)))
        self._compute = self._resources.own(cuda.Stream())
        self._downloads = self._resources.own(cuda.Stream())
        dictionary_ptr = None
        if contract.dictionary_binding == "input":
            flat = np.ascontiguousarray(dictionary, dtype=np.float32)
            self._dictionary = self._resources.own(cuda.DeviceBuffer(flat.nbytes))
            self._uploads.copy_to_device(self._dictionary.ptr, flat.ctypes.data, flat.nbytes)
            self._uploads.synchronize()
            dictionary_ptr = self._dictionary.ptr
        output_size = int(self._engine.get_tensor_shape(EMBEDDING_OUTPUT)[-1])
        self._slots = [
            _Slot(self._engine, self._resources, contract, self.max_batch, dictionary_ptr, output_size)
            for _ in range(2)
        ]
        self._next = 0
        self._contract = contract

    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        return self.start(images, occlusion)()

    def start(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], np.ndarray]:
        """Queue one batch on the next slot; the returned call waits for it and returns the embeddings.

        The slot is reused two batches later: by then the caller has waited for this one."""
        with self._current_context():
            slot, count = self._queue(images, occlusion)

        def wait() -> np.ndarray:
            with self._current_context():
                slot.downloaded.synchronize()
            return slot.output.array[:count].copy()

        return wait

    def direct_call(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], object]:
        return lambda: self.infer(images, occlusion)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "version": self._entry["version"],
            "device": "cuda",
            "compute_capability": getattr(self, "compute_capability", None),
            "engine": self._entry["file"],
            "profile": self._entry["profile"],
            "cuda_graphs": getattr(self, "_use_graphs", False),
            "buckets": list(self.preferred_batch_sizes),
        }

    def close(self) -> None:
        """Graphs first, then TensorRT's contexts, engine and runtime, then memory, events, streams."""
        with self._current_context():
            for slot in getattr(self, "_slots", []):
                for graph in slot.graphs.values():
                    if graph is not None:
                        graph.close()
                slot.context = None
            self._engine = None
            self._runtime = None
            self._resources.close()

    def _queue(self, images: np.ndarray, occlusion: np.ndarray) -> tuple[_Slot, int]:
        count = len(images)
        if not self.min_batch <= count <= self.max_batch:
            raise ValueError(
                f"a batch of {count} is outside the engine's profile {self.min_batch}..{self.max_batch}; "
                f"rebuild the engine with `pdsn build --batch MIN,OPT,MAX` covering it, or open the "
                f"Recognizer with max_batch <= {self.max_batch}"
            )
        slot = self._slots[self._next]
        self._next = 1 - self._next
        slot.downloaded.synchronize()  # the slot's last batch is done with its pinned buffers
        bucket = next(b for b in self.preferred_batch_sizes if b >= count)
        slot.images.array[:count] = images
        slot.occlusion.array[:count] = occlusion
        self._uploads.copy_to_device(slot.device[IMAGE_INPUT].ptr, slot.images.ptr, images.nbytes)
        self._uploads.copy_to_device(slot.device[OCCLUSION_INPUT].ptr, slot.occlusion.ptr, occlusion.nbytes)
        slot.inputs_ready.record(self._uploads)
        slot.inputs_ready.make_wait(self._compute)
        self._execute(slot, bucket)
        slot.computed.record(self._compute)
        slot.computed.make_wait(self._downloads)
        nbytes = count * slot.output.array.shape[1] * 4
        self._downloads.copy_to_host(slot.output.ptr, slot.device[EMBEDDING_OUTPUT].ptr, nbytes)
        slot.downloaded.record(self._downloads)
        return slot, count

    def _execute(self, slot: _Slot, bucket: int) -> None:
        if slot.shape_set != bucket:
            for name in (IMAGE_INPUT, OCCLUSION_INPUT):
                shape = (bucket, *self._engine.get_tensor_shape(name)[1:])
                if not slot.context.set_input_shape(name, shape):
                    raise RuntimeError(f"{self.name} refused input shape {shape} for {name}")
            slot.shape_set = bucket
        graph = slot.graphs.get(bucket)
        if graph is not None:
            graph.launch()
            return
        enqueue = self._enqueue(slot)
        enqueue(self._compute.handle)
        if self._use_graphs and bucket not in slot.graphs:
            slot.graphs[bucket] = self._capture(slot, bucket, enqueue)

    def _capture(self, slot: _Slot, bucket: int, enqueue: Callable[[int], None]) -> cuda.CudaGraph | None:
        """A graph of one enqueue (after the warm-up one just made), or None to keep enqueuing."""
        try:
            return self._resources.own(cuda.CudaGraph(self._compute, enqueue))
        except (cuda.CudaError, RuntimeError) as exc:
            _log.warning("CUDA graph capture failed for batch %d (%s); this bucket runs without a graph", bucket, exc)
            return None

    def _enqueue(self, slot: _Slot) -> Callable[[int], None]:
        def enqueue(stream: int) -> None:
            if not slot.context.execute_async_v3(stream):
                raise RuntimeError(f"{self.name} execute_async_v3 failed; see the TensorRT log")

        return enqueue

    def _current_context(self):
        return _ApplicationContext(self._application_context)


class _ApplicationContext:
    """Makes an application's CUDA context current around our calls: a pycuda ``Context``
    (``push``/``pop``) or a cuda-python driver ``CUcontext``. None: the device's primary context."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def __enter__(self) -> None:
        if self._context is None:
            return
        if hasattr(self._context, "push"):
            self._context.push()
        else:
            from cuda.bindings import driver

            (status,) = driver.cuCtxPushCurrent(self._context)
            if int(status) != 0:
                raise cuda.CudaError(f"cuCtxPushCurrent failed: {status}")

    def __exit__(self, *exc: object) -> None:
        if self._context is None:
            return
        if hasattr(self._context, "pop"):
            self._context.pop()
        else:
            from cuda.bindings import driver

            driver.cuCtxPopCurrent()


def _stream_handle(stream: Any) -> int | None:
    """An application's stream: an int handle, a pycuda ``Stream`` (``.handle``) or a cuda-python stream."""
    if stream is None:
        return None
    return int(getattr(stream, "handle", stream))


def _powers_of_two(limit: int) -> list[int]:
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]
