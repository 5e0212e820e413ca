"""A stand-in for data-centre ``tensorrt`` (10.13) and its ``tensorrt.plugin``, for CPU-only tests.

Data-centre TensorRT needs a GPU to build; this stand-in has the API surface the engine builder
and the FDM plugin glue use, records what they configure, and returns a fake plan. Its runtime
deserializes plans written by ``engine_plan``: engines whose I/O tensors the test chooses, and which
compute, from the memory bound to them, a stand-in embedding (see ``FakeContext``).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import onnx


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class _Logger(_ILogger):
    WARNING = _Severity.WARNING

    def __init__(self, severity: _Severity = _Severity.WARNING) -> None:
        self.severity = severity


class _IProgressMonitor:
    def __init__(self) -> None:
        pass


class _TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob + b"+timings"


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low, opt, high) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class _Network:
    def __init__(self) -> None:
        self.inputs: list[types.SimpleNamespace] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> types.SimpleNamespace:
        return self.inputs[index]


class _Config:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.hardware_compatibility_level = "NONE"
        self.cache: _TimingCache | None = None
        self.profiles: list[_Profile] = []
        self.progress_monitor = None
        self.builder_optimization_level = 3

    def add_optimization_profile(self, profile: _Profile) -> None:
        self.profiles.append(profile)

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, blob: bytes) -> _TimingCache:
        return _TimingCache(bytes(blob))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return not cache.blob.startswith(b"other-gpu")

    def get_timing_cache(self) -> _TimingCache | None:
        return self.cache


class FakeBuilder:
    configs: ClassVar[list[_Config]] = []

    def __init__(self, logger) -> None:
        self.logger = logger

    def create_network(self, flags: int) -> _Network:
        assert flags == 1 << 1, "STRONGLY_TYPED is bit 1 on data-centre TensorRT"
        return _Network()

    def create_builder_config(self) -> _Config:
        self.configs.append(_Config())
        return self.configs[-1]

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network, config: _Config) -> bytes:
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 1)
            monitor.phase_finish("Building engine")
        return b"plan:" + json.dumps(sorted(config.flags)).encode()


class _Parser:
    def __init__(self, network, logger) -> None:
        self.network = network

    def parse_from_file(self, path: str) -> bool:
        graph = onnx.load(path, load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        for value in graph.input:
            if value.name not in initializers:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(types.SimpleNamespace(name=value.name, shape=dims))
        return True


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7


_NUMPY_TYPES = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}


def nptype(dtype: DataType) -> type:
    if dtype not in _NUMPY_TYPES:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return _NUMPY_TYPES[dtype]


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def engine_tensor(
    name: str, dtype: str, shape: list[int], batch: tuple[int, int, int] | None = None, output: bool = False
) -> dict:
    """One I/O tensor of a stand-in engine (``dtype`` a ``DataType`` name); -1 in ``shape`` is the
    batch, whose profile (min, opt, max) an input with one gives as ``batch``."""
    tensor = {"name": name, "dtype": dtype, "shape": shape, "input": not output}
    if batch is not None:
        tensor["profile"] = [[n, *shape[1:]] for n in batch]
    return tensor


def engine_plan(tensors: list[dict], refuse_address: tuple[str, ...] = ()) -> bytes:
    """A plan the stand-in runtime deserializes into an engine with these I/O tensors, whose
    contexts refuse ``set_tensor_address`` for the names in ``refuse_address``."""
    return json.dumps({"tensors": tensors, "refuse_address": list(refuse_address)}).encode()


class FakeContext:
    """Records its shapes and bound addresses; ``execute_async_v3`` queues, on the stream, a run that
    writes row i of the output as: column j = the sum of row i of the j-th batched input, then the
    number of kept elements of the static input (the dictionary: its sum, or its set bits if packed)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if not all(a <= n <= b for a, n, b in zip(low, shape, high)) or len(shape) != len(low):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.engine.tensors[name]["shape"])
        if name in self.shapes:
            return self.shapes[name]
        batch = next(iter(self.shapes.values()), (-1,))[0]
        return tuple(batch if d < 0 else d for d in shape)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return name in self.engine.tensors and name not in self.engine.refuse_address

    def execute_async_v3(self, stream: int) -> bool:
        self.executions += 1
        FakeRuntime.stream_work(stream, self._run)
        return True

    def _run(self) -> None:
        inputs = [t for t in self.engine.tensors.values() if t["input"]]
        (output,) = [t for t in self.engine.tensors.values() if not t["input"]]
        result = self._view(output["name"])
        result[:] = 0
        batched = [self._view(t["name"]) for t in inputs if "profile" in t]
        for column, rows in enumerate(batched):
            result[:, column] = rows.reshape(len(rows), -1).sum(axis=1)
        for t in inputs:
            if "profile" not in t:
                static = self._view(t["name"])
                packed = np.issubdtype(static.dtype, np.integer)
                result[:, len(batched)] = np.unpackbits(static.view(np.uint8)).sum() if packed else static.sum()

    def _view(self, name: str) -> np.ndarray:
        dtype = np.dtype(nptype(DataType[self.engine.tensors[name]["dtype"]]))
        shape = self.get_tensor_shape(name)
        raw = (ctypes.c_char * (int(np.prod(shape)) * dtype.itemsize)).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape)


class FakeEngine:
    """A deserialized ``engine_plan``: its tensors, and every execution context made from it."""

    def __init__(self, plan: dict) -> None:
        self.tensors = {t["name"]: t for t in plan["tensors"]}
        self.refuse_address = set(plan["refuse_address"])
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if self.tensors[name]["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0, "the stand-in engines have one optimization profile"
        return [tuple(shape) for shape in self.tensors[name]["profile"]]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def _run_now(stream: int, work: Callable[[], None]) -> None:
    work()


class FakeRuntime:
    """``tensorrt.Runtime``: ``engines`` holds every engine it deserialized; ``stream_work(stream,
    work)`` is how a context queues its run (at once, unless a test routes it to a fake CUDA stream)."""

    engines: ClassVar[list[FakeEngine]] = []
    stream_work: ClassVar[Callable[[int, Callable[[], None]], None]] = staticmethod(_run_now)

    def __init__(self, logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        try:
            engine = FakeEngine(json.loads(plan))
        except ValueError:
            return None  # what TensorRT returns for a plan it cannot load
        self.engines.append(engine)
        return engine


class _FakePlugin(types.ModuleType):
    """``tensorrt.plugin``: records the decorated descriptor and AOT implementation by plugin id."""

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = 1
        shared_mem = 0

    class SymIntExprs(tuple):
        @classmethod
        def from_tuple(cls, values: tuple) -> tuple:
            return tuple(values)

    @staticmethod
    def SymInt32(value: int) -> int:
        return value

    TensorDesc = types.SimpleNamespace

    def __init__(self) -> None:
        super().__init__("tensorrt.plugin")
        self.registered: dict[str, object] = {}
        self.aot: dict[str, object] = {}

    def register(self, plugin_id: str):
        return lambda function: self.registered.setdefault(plugin_id, function)

    def aot_impl(self, plugin_id: str):
        return lambda function: self.aot.setdefault(plugin_id, function)


def install_fake_tensorrt(
    monkeypatch, plugin: bool = True, stream_work: Callable[[int, Callable[[], None]], None] = _run_now
) -> types.ModuleType:
    """Put the stand-in in ``sys.modules``; the GPU it 'builds on' has compute capability 9.0.

    ``stream_work``: how its execution contexts queue a run on a stream (a fake CUDA runtime's ``enqueue``)."""
    FakeBuilder.configs = []
    FakeRuntime.engines = []
    monkeypatch.setattr(FakeRuntime, "stream_work", staticmethod(stream_work))
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.13.0.35"
    module.Builder = FakeBuilder
    module.OnnxParser = _Parser
    module.Dims = tuple
    module.ILogger = _ILogger
    module.Logger = _Logger
    module.Runtime = FakeRuntime
    module.DataType, module.TensorIOMode, module.nptype = DataType, TensorIOMode, nptype
    module.IProgressMonitor = _IProgressMonitor
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    module.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    module.HardwareCompatibilityLevel = types.SimpleNamespace(
        NONE="NONE", AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY"
    )
    module.int32, module.float16, module.float32 = "int32", "float16", "float32"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if plugin:
        module.plugin = _FakePlugin()
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", module.plugin)
    monkeypatch.setattr("pdsn.engines.flavour.current_compute_capability", lambda: "9.0")
    return module
