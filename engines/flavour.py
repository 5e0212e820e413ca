"""The one place that knows how data-centre TensorRT and TensorRT-RTX differ at build time.

Facts behind each branch (checked 2026-11: TensorRT-RTX 1.7.1 by introspection of
``tensorrt_rtx_bindings``, TensorRT 10.13 through ``tensorrt-stubs``, TensorRT 11 through its
10.x -> 11.x migration guide):

- Module: ``tensorrt`` (10.x, 11.x) or ``tensorrt_rtx_bindings`` (the pip wheels
  ``tensorrt-rtx-cu13-bindings``; NVIDIA's docs call the module ``tensorrt_rtx``). A bare
  ``tensorrt-stubs`` install leaves an empty ``tensorrt`` namespace package that imports without
  error, so a module counts as installed only if it has ``Builder``.
- Strong typing: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is opt-in on 10.x (value 1),
  accepted but ignored on 11.x (networks are always strongly typed) and the only member on RTX
  (value 0): always ``1 << int(flag)``, never a literal.
- Precision: ``BuilderFlag.FP16/INT8/BF16/FP8``, ``OBEY/PREFER_PRECISION_CONSTRAINTS``,
  ``int8_calibrator`` and the algorithm selector are removed in 11.x and absent from RTX. This
  builder never sets a precision flag: the precision is the ONNX variant's (FP16-typed graph,
  explicit Q/DQ for INT8).
- Timing cache: ``create_timing_cache(bytes)`` / ``set_timing_cache(cache, ignore_mismatch)`` /
  ``get_timing_cache().serialize()`` on 10.x and 11.x. On RTX the calls exist but are no-ops
  (deprecated since RTX 1.2, with a DeprecationWarning): RTX compiles its kernels just in time on
  the target GPU and caches them in a *runtime* cache (``IRuntimeConfig.create_runtime_cache``),
  which belongs to the runtime, not the build.
- Progress: ``IProgressMonitor`` (``phase_start`` / ``step_complete`` / ``phase_finish``) set as
  ``IBuilderConfig.progress_monitor``, in 10.x, 11.x and RTX alike.
- Targets: data-centre TensorRT builds for the GPU it runs on (it needs one); hardware
  compatibility is ``hardware_compatibility_level = AMPERE_PLUS`` (10.x, 11.x) or
  ``SAME_COMPUTE_CAPABILITY`` (10.9 and later). RTX builds ahead of time without a GPU; by default
  for compute capability 8.0, 8.6, 8.9 and 12.x ("portable"), otherwise for the capabilities set
  with ``num_compute_capabilities`` + ``set_compute_capability(ComputeCapability.SMxx, i)``
  (Turing, SM75, only when asked for). RTX ignores ``hardware_compatibility_level`` with a
  warning ("unsupported in TensorRT-RTX").
- Version compatibility: ``BuilderFlag.VERSION_COMPATIBLE`` (10.x, 11.x: the plan runs on later
  runtimes of the same major version, with the lean runtime embedded unless
  ``EXCLUDE_LEAN_RUNTIME``). RTX engines are tied to their RTX version.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pdsn.errors import PdsnError
from pdsn.kernels.tensorrt_modules import FLAVOURS, INSTALL_HINTS, MODULES, import_tensorrt

if TYPE_CHECKING:
    import tensorrt as trt

MIN_TENSORRT = (10, 8)
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere-plus": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
PORTABLE = "portable"
PROGRESS_DEPTH = 2  # phases nested deeper than this are not reported

_log = logging.getLogger(__name__)


class TensorRTUnavailableError(PdsnError, RuntimeError):
    """The requested TensorRT flavour is not installed (or too old) here."""


@dataclass(frozen=True)
class BuildTargets:
    """Where the engine must run: RTX compute capabilities, or data-centre compatibility modes."""

    compute_capabilities: tuple[str, ...] = ()  # "7.5", "8.6", ...: RTX only
    hardware_compatibility: str = "none"  # data-centre only
    version_compatible: bool = False  # data-centre only


@dataclass(frozen=True)
class Flavour:
    """An imported TensorRT module ("tensorrt" or "tensorrt-rtx"), and how to drive its builder."""

    name: str
    module: Any
    version: str

    @property
    def has_timing_cache(self) -> bool:
        return self.name == "tensorrt"

    def network_flags(self) -> int:
        return 1 << int(self.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def check_targets(self, targets: BuildTargets) -> None:
        """Refuse options this flavour would silently ignore."""
        if targets.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ValueError(
                f"--hardware-compatibility {targets.hardware_compatibility!r} is not one of "
                f"{sorted(HARDWARE_COMPATIBILITY)}"
            )
        for capability in targets.compute_capabilities:
            if not re.fullmatch(r"\d+\.\d+", capability):
                raise ValueError(f"--compute-capability {capability!r}: expected MAJOR.MINOR such as 8.6")
        if self.name == "tensorrt-rtx":
            if targets.hardware_compatibility != "none" or targets.version_compatible:
                raise ValueError(
                    "TensorRT-RTX has no hardware- or version-compatible engines (it ignores both); "
                    "its engines are portable across RTX GPUs by default. Leave out "
                    "--hardware-compatibility/--version-compatible, or use --flavour tensorrt"
                )
            missing = [c for c in targets.compute_capabilities if not hasattr(self.module.ComputeCapability, _sm(c))]
            if missing:
                known = [m for m in self.module.ComputeCapability.__members__ if m.startswith("SM")]
                raise ValueError(
                    f"TensorRT-RTX {self.version} cannot target compute capability {', '.join(missing)}; "
                    f"it knows {', '.join(known)}"
                )
        elif targets.compute_capabilities:
            raise ValueError(
                "data-centre TensorRT builds for the GPU it runs on; --compute-capability is for "
                "TensorRT-RTX ahead-of-time builds. Use --hardware-compatibility ampere-plus for an "
                "engine that runs on other GPUs"
            )
        elif not hasattr(
            self.module.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[targets.hardware_compatibility]
        ):
            raise ValueError(
                f"--hardware-compatibility {targets.hardware_compatibility} needs TensorRT 10.9 or "
                f"later (this is {self.version})"
            )

    def check_fdm_impl(self, fdm_impl: str) -> None:
        if fdm_impl == "plugin" and self.name != "tensorrt":
            raise ValueError(
                f"--fdm-impl plugin: {self.name} {self.version} has no Python plugins (no "
                f"tensorrt.plugin module), so it cannot embed the fused kernel; build with "
                f"--fdm-impl native, or with --flavour tensorrt (10.9 or later) for the plugin"
            )

    def apply_targets(self, config: trt.IBuilderConfig, targets: BuildTargets) -> str:
        """Configure ``config`` for ``targets`` (checked by :meth:`check_targets`); returns the
        engine's target label for its file name."""
        if self.name == "tensorrt-rtx":
            return _apply_rtx_capabilities(self.module, config, targets.compute_capabilities)
        level = HARDWARE_COMPATIBILITY[targets.hardware_compatibility]
        config.hardware_compatibility_level = getattr(self.module.HardwareCompatibilityLevel, level)
        if targets.version_compatible:
            config.set_flag(self.module.BuilderFlag.VERSION_COMPATIBLE)
        if targets.hardware_compatibility == "ampere-plus":
            return "ampere-plus"
        capability = current_compute_capability()
        return "sm" + capability.replace(".", "") if capability else "sm-unknown"

    def attach_timing_cache(self, config: trt.IBuilderConfig, serialized: bytes) -> bool:
        """Give the builder a timing cache made from ``serialized`` (empty: a new one).

        Returns False when TensorRT refused the stored cache (made on another GPU or version); the
        build then starts from an empty cache.
        """
        if config.set_timing_cache(config.create_timing_cache(serialized), False):
            return True
        config.set_timing_cache(config.create_timing_cache(b""), False)
        return False

    def serialized_timing_cache(self, config: trt.IBuilderConfig) -> bytes:
        return bytes(memoryview(config.get_timing_cache().serialize()))

    def logger(self, verbose: bool = False) -> Any:
        """A TensorRT logger that forwards to :mod:`logging` and keeps the errors for messages."""
        base = self.module.ILogger
        severity = self.module.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.ERROR,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.INFO,
            severity.VERBOSE: logging.DEBUG,
        }
        shown = severity.VERBOSE if verbose else severity.WARNING
        flavour = self.name

        class _Logger(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.errors: list[str] = []

            def log(self, level: Any, message: str) -> None:
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(message)
                if int(level) <= int(shown):
                    _log.log(levels[level], "[%s] %s", flavour, message)

        return _Logger()

    def progress_monitor(self, report: Callable[[str], None]) -> Any:
        """An ``IProgressMonitor`` that reports the start of the outer phases and the end of the
        build, each with the elapsed time; the innermost phases repeat too often to be worth a line."""
        base = self.module.IProgressMonitor
        started = time.perf_counter()

        class _Monitor(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.depth: dict[str, int] = {}

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self.depth[phase_name] = depth
                steps = f" ({num_steps} steps)" if num_steps > 1 else ""
                if depth <= PROGRESS_DEPTH:
                    report(f"[{time.perf_counter() - started:7.1f} s] {'  ' * depth}{phase_name}{steps}")

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True

            def phase_finish(self, phase_name: str) -> None:
                if self.depth.pop(phase_name, 0) == 0:
                    report(f"[{time.perf_counter() - started:7.1f} s] {phase_name}: done")

        return _Monitor()


def report_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_flavour(name: str) -> Flavour:
    """Import the TensorRT flavour ``name`` ("auto": data-centre TensorRT if installed, else RTX)."""
    if name == "auto":
        for candidate in FLAVOURS:
            if import_tensorrt(candidate, "Builder") is not None:
                return load_flavour(candidate)
        raise TensorRTUnavailableError(
            "no TensorRT is installed: building an engine needs TensorRT-RTX, "
            f"{INSTALL_HINTS['tensorrt-rtx']}, or data-centre TensorRT: {INSTALL_HINTS['tensorrt']}"
        )
    if name not in FLAVOURS:
        raise ValueError(f"--flavour {name!r} is not one of {('auto', *FLAVOURS)}")
    module = import_tensorrt(name, "Builder")
    if module is None:
        raise TensorRTUnavailableError(
            f"--flavour {name}: the Python module {MODULES[name]!r} is not installed; {INSTALL_HINTS[name]}"
        )
    version = str(module.__version__)
    if name == "tensorrt" and _major_minor(version) < MIN_TENSORRT:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: this builder needs {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or "
            f"later (strongly typed networks, progress monitor); {INSTALL_HINTS[name]}"
        )
    return Flavour(name, module, version)


def current_compute_capability() -> str | None:
    """The first visible GPU's compute capability ("9.0"), or None where none can be queried."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        attribute = cudart.cudaDeviceAttr
        try:
            err_major, major = cudart.cudaDeviceGetAttribute(attribute.cudaDevAttrComputeCapabilityMajor, 0)
            err_minor, minor = cudart.cudaDeviceGetAttribute(attribute.cudaDevAttrComputeCapabilityMinor, 0)
        except RuntimeError:  # cuda-python could not load the CUDA libraries
            err_major = err_minor = -1
        if int(err_major) == int(err_minor) == 0:
            return f"{major}.{minor}"
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", "--id=0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    value = result.stdout.strip()
    return value if result.returncode == 0 and re.fullmatch(r"\d+\.\d+", value) else None


def _apply_rtx_capabilities(module: Any, config: Any, capabilities: tuple[str, ...]) -> str:
    if not capabilities:
        return PORTABLE
    config.num_compute_capabilities = len(capabilities)
    for index, capability in enumerate(capabilities):
        if not config.set_compute_capability(getattr(module.ComputeCapability, _sm(capability)), index):
            raise ValueError(f"TensorRT-RTX refused compute capability {capability} at index {index}")
    return "-".join(_sm(c).lower() for c in capabilities)


def _sm(capability: str) -> str:
    return "SM" + capability.replace(".", "")


def _major_minor(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", version)
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else (0, 0)
