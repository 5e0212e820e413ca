"""TensorRT and TensorRT-RTX engines on an NVIDIA GPU, with everything resident on the device.

At load: the engine is checked against what is installed (flavour, version, GPU) before it is
deserialized. Its I/O tensors (names, dtypes, shapes, and the batch range of its optimization
profile) are then read from the engine itself and checked against the bundle's contract
(:func:`pdsn.runtime.model_io.check_model_io`) and the manifest's profile; every buffer is sized
from them. Device buffers are allocated once for the profile's largest batch, with pinned host
buffers beside them. The dictionary is uploaded once in the form the engine takes: float32
[25, C, H, W], or, for an engine built with the fused FDM plugin (its ``fdm_dictionary_packed``
input), the bit-packed [25, words] rows of :mod:`pdsn.kernels.fdm_pack`; the plugin's kernel is
stored in the engine, so nothing is registered here. Every address is bound with
``set_tensor_address``, and a refused one is an error naming the tensor.

Per call: the uint8 images (4x smaller than float) and the occlusion rows are copied in on an upload
stream (the application's, when it hands one over), the engine runs on a compute stream, and the
embeddings are copied back on a download stream, with events ordering the three. Two slots
(execution context, buffers, graphs each) alternate, and ``start`` returns once a batch is queued,
so the batcher starts the next batch while this one computes: its uploads do not queue behind this
batch's download, which waits for the compute. The engine runs as a CUDA graph per batch bucket
(powers of two within the profile), captured after one warm-up enqueue; a bucket whose capture
fails runs with ``execute_async_v3`` instead. A batch is padded up to its bucket; the padded rows
are never read.

``direct_call`` is what an application calling TensorRT itself does per batch: copy in,
``execute_async_v3``, copy out and synchronize on one stream, with a context and buffers of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdsn.kernels.fdm_pack import pack_dictionary
from pdsn.kernels.tensorrt_modules import import_tensorrt
from pdsn.model.bundle_format import (
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    PACKED_DICTIONARY_INPUT,
    BundleIntegrityError,
    ModelContract,
)
from pdsn.model.manifest import Engine
from pdsn.runtime import cuda_memory as cuda
from pdsn.runtime.backends.base import BackendUnavailableError, PipelinedBackend
from pdsn.runtime.backends.engines import check_engine
from pdsn.runtime.model_io import TensorSpec, check_model_io

_log = logging.getLogger(__name__)
FED_INPUTS = (IMAGE_INPUT, OCCLUSION_INPUT)  # copied in per call; any other input is the dictionary


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor as the engine declares it; -1 marks a dimension set per call."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    # The smallest and largest shapes of optimization profile 0, for an input with a -1 dimension.
    profile: tuple[tuple[int, ...], tuple[int, ...]] | None


def engine_tensors(trt: Any, engine: Any) -> dict[str, EngineTensor]:
    """Every I/O tensor of a deserialized engine, in the engine's order."""
    tensors = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        profile = None
        if is_input and -1 in shape:
            low, _, high = engine.get_tensor_profile_shape(name, 0)
            profile = (tuple(int(d) for d in low), tuple(int(d) for d in high))
        tensors[name] = EngineTensor(name, is_input, _numpy_dtype(trt, engine, name), shape, profile)
    return tensors


def check_engine_io(tensors: dict[str, EngineTensor], contract: ModelContract, source: str) -> None:
    """The engine's tensors against the contract (names, dtypes, shapes); BundleIntegrityError if they differ."""

    def spec(tensor: EngineTensor) -> TensorSpec:
        return TensorSpec(tensor.name, tensor.dtype.name, tuple(None if d < 0 else d for d in tensor.shape))

    values = list(tensors.values())
    check_model_io(
        contract, [spec(t) for t in values if t.is_input], [spec(t) for t in values if not t.is_input], source
    )


def _numpy_dtype(trt: Any, engine: Any, name: str) -> np.dtype:
    dtype = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise BundleIntegrityError(
            f"engine tensor {name!r} is {dtype}, which numpy cannot hold; the contract's tensors are uint8, "
            f"float32 and int32. Rebuild the engine from the bundle with `pdsn build`"
        ) from None


class _Binding:
    """An execution context with every tensor address bound: device and pinned buffers for the fed
    inputs and the output, sized for ``rows`` images, and the dictionary's device buffer."""

    def __init__(
        self,
        engine: Any,
        tensors: dict[str, EngineTensor],
        resources: cuda.ResourceStack,
        rows: int,
        dictionary: dict[str, int],
    ) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise cuda.DeviceOutOfMemoryError(
                "TensorRT could not create an execution context (its activation memory did not fit on the GPU)"
            )
        self.host: dict[str, cuda.PinnedArray] = {}
        self.device: dict[str, cuda.DeviceBuffer] = {}
        for name in FED_INPUTS:
            shape = (rows, *tensors[name].shape[1:])
            _set_input_shape(self.context, name, shape)
            self._allocate(resources, name, shape, tensors[name].dtype)
        self.rows_set = rows
        output_shape = tuple(int(d) for d in self.context.get_tensor_shape(EMBEDDING_OUTPUT))
        if any(d < 0 for d in output_shape):
            raise RuntimeError(f"TensorRT left output {EMBEDDING_OUTPUT!r} shaped {output_shape} for {rows} images")
        self._allocate(resources, EMBEDDING_OUTPUT, output_shape, tensors[EMBEDDING_OUTPUT].dtype)
        addresses = {**dictionary, **{name: buffer.ptr for name, buffer in self.device.items()}}
        for name, address in addresses.items():
            _bind_address(self.context, name, address)

    def _allocate(self, resources: cuda.ResourceStack, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.host[name] = resources.own(cuda.PinnedArray(shape, dtype))
        self.device[name] = resources.own(cuda.DeviceBuffer(self.host[name].nbytes))

    def execute(self, stream: int, backend: str) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"{backend} execute_async_v3 failed; see the TensorRT log")


class _Slot(_Binding):
    """One in-flight batch: a binding for the profile's largest batch, its events and its graphs."""

    def __init__(
        self,
        engine: Any,
        tensors: dict[str, EngineTensor],
        resources: cuda.ResourceStack,
        rows: int,
        dictionary: dict[str, int],
    ) -> None:
        super().__init__(engine, tensors, resources, rows, dictionary)
        self.inputs_ready = resources.own(cuda.Event())
        self.computed = resources.own(cuda.Event())
        self.downloaded = resources.own(cuda.Event())
        self.graphs: dict[int, cuda.CudaGraph | None] = {}


def _set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    if not context.set_input_shape(name, shape):
        raise RuntimeError(
            f"TensorRT refused input shape {shape} for {name!r}: it is outside the engine's optimization profile"
        )


def _bind_address(context: Any, name: str, address: int) -> None:
    """``set_tensor_address``, which returns False instead of raising when TensorRT refuses it."""
    if not context.set_tensor_address(name, address):
        raise RuntimeError(
            f"TensorRT refused address {address:#x} for tensor {name!r} (set_tensor_address returned False): "
            f"the engine has no such I/O tensor or the address is misaligned; see the TensorRT log"
        )


class TensorRTBackend(PipelinedBackend):
    """Runs a bundle's TensorRT or TensorRT-RTX engine; see the module docstring for the data path."""

    def __init__(
        self,
        engine_path: str,
        dictionary: np.ndarray,
        contract: ModelContract,
        device: str = "cuda",
        *,
        engine: Engine,
        gpu: int = 0,
        cuda_graphs: bool = True,
        cuda_stream: Any = None,
        cuda_context: Any = None,
    ) -> None:
        if device != "cuda":
            raise ValueError(f"the {engine.flavour} backend runs on device='cuda', not {device!r}")
        self.name = engine.flavour
        trt = import_tensorrt(self.name, "Runtime")
        check_engine(engine, None if trt is None else str(trt.__version__), None)
        self._entry = engine
        self._application_context = cuda_context
        self._resources = cuda.ResourceStack()
        self._bindings: list[_Binding] = []
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
        self._tensors = engine_tensors(trt, self._engine)
        check_engine_io(self._tensors, contract, f"engine {self._entry.file}")
        self.min_batch, self.max_batch = self._batch_range()
        self.preferred_batch_sizes = tuple(b for b in _powers_of_two(self.max_batch) if b >= self.min_batch)
        self._use_graphs = cuda_graphs
        self._uploads = self._resources.own(cuda.Stream(_stream_handle(cuda_stream)))
        self._compute = self._resources.own(cuda.Stream())
        self._downloads = self._resources.own(cuda.Stream())
        self._dictionary = self._upload_dictionary(dictionary)
        self._slots = [self._bind(_Slot, self.max_batch) for _ in range(2)]
        self._next = 0

    def _batch_range(self) -> tuple[int, int]:
        """The profile's batch range, which every fed input and the manifest entry must agree on."""
        ranges = {(t.profile[0][0], t.profile[1][0]) for t in self._tensors.values() if t.profile is not None}
        profile = self._entry.profile
        recorded = (profile.min, profile.max)
        if ranges != {recorded}:
            found = ", ".join(f"{low}..{high}" for low, high in sorted(ranges)) or "no dynamic batch"
            raise BundleIntegrityError(
                f"engine {self._entry.file}'s optimization profile has batch {found}, but its manifest entry "
                f"records {recorded[0]}..{recorded[1]}: the manifest does not describe this engine; rebuild it "
                f"with `pdsn build`"
            )
        return recorded

    def _upload_dictionary(self, dictionary: np.ndarray) -> dict[str, int]:
        """The dictionary input's name -> its device address (none when the engine embeds it).

        The FDM plugin's packed input holds ``pack_dictionary``'s uint32 rows, bound as the engine's
        int32 (the same bits: TensorRT has no uint32)."""
        names = [name for name, t in self._tensors.items() if t.is_input and name not in FED_INPUTS]
        if not names:
            return {}
        tensor = self._tensors[names[0]]
        packed = tensor.name == PACKED_DICTIONARY_INPUT
        data = pack_dictionary(dictionary).view(tensor.dtype) if packed else dictionary.astype(tensor.dtype)
        if data.shape != tensor.shape:
            form = "bit-packed, " if packed else ""
            raise BundleIntegrityError(
                f"engine {self._entry.file} takes {tensor.name!r} shaped {tensor.shape}, but the bundle's "
                f"dictionary {dictionary.shape} makes ({form}{tensor.dtype.name}) {data.shape}; rebuild the engine "
                f"from this bundle with `pdsn build`"
            )
        data = np.ascontiguousarray(data)
        buffer = self._resources.own(cuda.DeviceBuffer(data.nbytes))
        self._uploads.copy_to_device(buffer.ptr, data.ctypes.data, data.nbytes)
        self._uploads.synchronize()
        return {tensor.name: buffer.ptr}

    def _bind(self, kind: type[_Binding], rows: int) -> Any:
        binding = kind(self._engine, self._tensors, self._resources, rows, self._dictionary)
        self._bindings.append(binding)
        return binding

    def start(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], np.ndarray]:
        """Queue one batch on the next slot; the returned call waits for it and returns the embeddings.

        The slot is reused two batches later: by then the caller has waited for this one."""
        with self._current_context():
            slot, count = self._queue(images, occlusion)

        def wait() -> np.ndarray:
            with self._current_context():
                slot.downloaded.synchronize()
            return slot.host[EMBEDDING_OUTPUT].array[:count].copy()

        return wait

    def direct_call(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], object]:
        """TensorRT's own calls on inputs put in pinned memory once: copy in, ``execute_async_v3``, copy
        out, synchronize, on a stream and a binding of its own (no slots, events or graphs). Its
        memory is released with the backend."""
        count = self._check_batch(len(images))
        with self._current_context():
            binding = self._bind(_Binding, count)
            stream = self._resources.own(cuda.Stream())
        binding.host[IMAGE_INPUT].array[:] = images
        binding.host[OCCLUSION_INPUT].array[:] = occlusion
        output = binding.host[EMBEDDING_OUTPUT]

        def call() -> np.ndarray:
            with self._current_context():
                for name in FED_INPUTS:
                    stream.copy_to_device(binding.device[name].ptr, binding.host[name].ptr, binding.host[name].nbytes)
                binding.execute(stream.handle, self.name)
                stream.copy_to_host(output.ptr, binding.device[EMBEDDING_OUTPUT].ptr, output.nbytes)
                stream.synchronize()
            return output.array

        return call

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "version": self._entry.version,
            "device": "cuda",
            "compute_capability": getattr(self, "compute_capability", None),
            "engine": self._entry.file,
            "profile": self._entry.profile.as_dict(),
            "fdm_impl": self._entry.fdm_impl,
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
            for binding in self._bindings:
                binding.context = None
            self._engine = None
            self._runtime = None
            self._resources.close()

    def _check_batch(self, count: int) -> int:
        if not self.min_batch <= count <= self.max_batch:
            raise ValueError(
                f"a batch of {count} is outside the engine's profile {self.min_batch}..{self.max_batch}; "
                f"rebuild the engine with `pdsn build --batch MIN,OPT,MAX` covering it, or open the "
                f"Recognizer with max_batch <= {self.max_batch}"
            )
        return count

    def _queue(self, images: np.ndarray, occlusion: np.ndarray) -> tuple[_Slot, int]:
        count = self._check_batch(len(images))
        slot = self._slots[self._next]
        self._next = 1 - self._next
        slot.downloaded.synchronize()  # the slot's last batch is done with its pinned buffers
        bucket = next(b for b in self.preferred_batch_sizes if b >= count)
        for name, data in zip(FED_INPUTS, (images, occlusion)):
            rows = slot.host[name].array[:count]
            rows[:] = data
            self._uploads.copy_to_device(slot.device[name].ptr, slot.host[name].ptr, rows.nbytes)
        slot.inputs_ready.record(self._uploads)
        slot.inputs_ready.make_wait(self._compute)
        self._execute(slot, bucket)
        slot.computed.record(self._compute)
        slot.computed.make_wait(self._downloads)
        output = slot.host[EMBEDDING_OUTPUT]
        self._downloads.copy_to_host(output.ptr, slot.device[EMBEDDING_OUTPUT].ptr, output.array[:count].nbytes)
        slot.downloaded.record(self._downloads)
        return slot, count

    def _execute(self, slot: _Slot, bucket: int) -> None:
        if slot.rows_set != bucket:
            for name in FED_INPUTS:
                _set_input_shape(slot.context, name, (bucket, *self._tensors[name].shape[1:]))
            slot.rows_set = bucket
        graph = slot.graphs.get(bucket)
        if graph is not None:
            graph.launch()
            return
        enqueue = self._enqueue(slot)
        enqueue(self._compute.handle)
        if self._use_graphs and bucket not in slot.graphs:
            slot.graphs[bucket] = self._capture(bucket, enqueue)

    def _capture(self, bucket: int, enqueue: Callable[[int], None]) -> cuda.CudaGraph | None:
        """A graph of one enqueue (after the warm-up one just made), or None to keep enqueuing."""
        try:
            return self._resources.own(cuda.CudaGraph(self._compute, enqueue))
        except (cuda.CudaError, RuntimeError) as exc:
            _log.warning("CUDA graph capture failed for batch %d (%s); this bucket runs without a graph", bucket, exc)
            return None

    def _enqueue(self, slot: _Slot) -> Callable[[int], None]:
        return lambda stream: slot.execute(stream, self.name)

    def _current_context(self) -> _ApplicationContext:
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
