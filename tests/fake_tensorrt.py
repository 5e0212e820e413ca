"""A stand-in for data-centre ``tensorrt`` (10.13) and its ``tensorrt.plugin``, for CPU-only tests.

Data-centre TensorRT needs a GPU to build; this stand-in has the API surface the engine builder
and the FDM plugin glue use, records what they configure, and returns a fake plan.
"""

from __future__ import annotations

import enum
import json
import sys
import types
from typing import ClassVar

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


def install_fake_tensorrt(monkeypatch, plugin: bool = True) -> types.ModuleType:
    """Put the stand-in in ``sys.modules``; the GPU it 'builds on' has compute capability 9.0."""
    FakeBuilder.configs = []
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.13.0.35"
    module.Builder = FakeBuilder
    module.OnnxParser = _Parser
    module.Dims = tuple
    module.ILogger = _ILogger
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
