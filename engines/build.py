"""``pdsn build``: one ONNX variant of a bundle -> a TensorRT engine recorded in the bundle.

The network is strongly typed, so the engine's precision is the variant's: FP16 from the
FP16-typed ONNX, INT8 from its explicit Q/DQ nodes. One optimization profile spans the batch
dimension of every input that has one (image and occlusion; the dictionary's shape is fixed). The
build runs in a ``BundleWrite``: under the bundle's write lock, the engine (and the flavour's
timing cache) are placed under names no listed file has, then the manifest switch records them; a
failed or killed build leaves the bundle as it was. Flavour differences live in
:mod:`pdsn.engines.flavour`.

``fdm_impl="plugin"`` first rewrites the variant (:mod:`pdsn.engines.fdm_plugin_graph`) so that the
FDM step is the fused kernel; that engine takes the packed dictionary as its input, which its
entry's ``inputs`` records. The inlined standard-op body stays the default until the plugin is
measured faster on a GPU. A TensorRT-RTX build for Turing (7.5) parses the variant's Turing
rewrite (:mod:`pdsn.engines.turing_graph`), once it passed its parity check.
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdsn.engines.flavour import BuildTargets, Flavour, load_flavour, report_to_stderr
from pdsn.engines.turing_graph import TURING
from pdsn.errors import PdsnError
from pdsn.model.bundle_format import sha256_file
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.manifest import Manifest, Variant, bundle_file, verify_files

if TYPE_CHECKING:
    import tensorrt as trt

ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
FDM_IMPLS = ("native", "plugin")
DEFAULT_BATCH = (1, 16, 128)


class EngineBuildError(PdsnError, RuntimeError):
    """TensorRT rejected the model or failed to build it; the bundle is unchanged."""


@dataclass(frozen=True)
class EngineBuildRequest:
    bundle: Path
    precision: str = "fp32"
    flavour: str = "auto"
    batch: tuple[int, int, int] = DEFAULT_BATCH  # min, opt, max of the profile
    fdm_impl: str = "native"
    targets: BuildTargets = field(default_factory=BuildTargets)
    optimization_level: int | None = None  # TensorRT's default (3) when None
    progress: Callable[[str], None] | None = report_to_stderr
    verbose: bool = False


def check_batch_profile(batch: tuple[int, ...]) -> tuple[int, int, int]:
    """``(min, opt, max)`` with ``1 <= min <= opt <= max``, or a ValueError that says what is wrong."""
    if len(batch) != 3 or not all(isinstance(n, int) for n in batch):
        given = ",".join(str(n) for n in batch)
        raise ValueError(f"--batch {given}: expected three integers MIN,OPT,MAX such as 1,16,128")
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise ValueError(
            f"--batch {low},{opt},{high}: expected 1 <= MIN <= OPT <= MAX (the profile's smallest, "
            f"tuned-for and largest batch), e.g. 1,16,128"
        )
    return low, opt, high


def engine_file_name(flavour: Flavour, target: str, request: EngineBuildRequest) -> str:
    """``engines/<flavour>-<version>-<target>-<precision>-b<min>-<opt>-<max>[-...].engine``."""
    low, opt, high = request.batch
    parts = [flavour.name, flavour.version, target, request.precision, f"b{low}-{opt}-{high}"]
    if request.fdm_impl != "native":
        parts.append(f"fdm-{request.fdm_impl}")
    if request.targets.hardware_compatibility != "none":
        parts.append(f"hw-{request.targets.hardware_compatibility}")
    if request.targets.version_compatible:
        parts.append("version-compatible")
    return f"{ENGINES_DIR}/{'-'.join(parts)}.engine"


@dataclass
class _Compiled:
    plan: Any
    target: str
    inputs: dict[str, list[int]]
    seconds: float
    timing_cache: bytes | None  # what to store for the next build, where the flavour has one
    timing_cache_loaded: int
    turing: dict | None  # the Turing rewrite's parity against the variant, when one was built


def build_engine(request: EngineBuildRequest) -> dict:
    """Build, write and record one engine; returns its manifest entry."""
    batch = check_batch_profile(tuple(request.batch))
    if request.precision not in PRECISIONS:
        raise ValueError(f"--precision {request.precision!r} is not one of {PRECISIONS}")
    if request.fdm_impl not in FDM_IMPLS:
        raise ValueError(f"--fdm-impl {request.fdm_impl!r} is not one of {FDM_IMPLS}")
    bundle = Path(request.bundle)
    with BundleWrite(bundle, f"pdsn build --precision {request.precision} --flavour {request.flavour}") as write:
        manifest = write.existing
        verify_files(bundle, manifest)
        variant = _variant(bundle, manifest, request.precision)
        flavour = load_flavour(request.flavour)
        flavour.check_targets(request.targets)
        flavour.check_fdm_impl(request.fdm_impl)
        compiled = _compile(flavour, request, bundle, manifest, variant.file, batch)

        preferred = engine_file_name(flavour, compiled.target, request)
        staged = write.staging / Path(preferred).name
        staged.write_bytes(memoryview(compiled.plan))
        engine_file = write.place(staged, preferred)
        entry: dict[str, Any] = {
            "file": engine_file,
            "sha256": sha256_file(bundle / engine_file),
            "bytes": (bundle / engine_file).stat().st_size,
            "flavour": flavour.name,
            "version": flavour.version,
            "compute_capability": compiled.target,
            "precision": request.precision,
            "variant": {
                "file": variant.file,
                "sha256": manifest.sha256_of(variant.file),
                "gate_passed": variant.parity.passed,
            },
            "profile": {"min": batch[0], "opt": batch[1], "max": batch[2]},
            "fdm_impl": request.fdm_impl,
            "turing_fp16_gemms": compiled.turing,
            "inputs": compiled.inputs,
            "hardware_compatibility": request.targets.hardware_compatibility,
            "version_compatible": request.targets.version_compatible,
            "optimization_level": request.optimization_level,
            "build_seconds": round(compiled.seconds, 2),
            # When the build finished (UTC): the runtime picks the newest engine by this, not by manifest order.
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "timing_cache": None,
        }
        document = manifest.document()
        engines = document.setdefault("engines", {})
        engines[Path(preferred).stem] = entry
        if compiled.timing_cache is not None:
            staged = write.staging / Path(_timing_cache_file(flavour)).name
            staged.write_bytes(compiled.timing_cache)
            cache_file = write.place(staged, _timing_cache_file(flavour))
            entry["timing_cache"] = {"file": cache_file, "loaded_bytes": compiled.timing_cache_loaded}
            for key, other in manifest.engines.items():  # one timing cache per flavour and version: the newest
                if other.timing_cache_file and (other.flavour, other.version) == (flavour.name, flavour.version):
                    engines[key]["timing_cache"]["file"] = cache_file
        write.commit(document)
    return entry


def _compile(
    flavour: Flavour,
    request: EngineBuildRequest,
    bundle: Path,
    manifest: Manifest,
    variant_file: str,
    batch: tuple[int, int, int],
) -> _Compiled:
    """Parse, configure and build; the parser lives until the build is done (it owns the weights)."""
    started = time.perf_counter()
    logger = flavour.logger(request.verbose)
    builder = flavour.module.Builder(logger)
    network = builder.create_network(flavour.network_flags())
    turing = TURING in request.targets.compute_capabilities
    variant = bundle_file(bundle, manifest, variant_file, manifest.entry_of(variant_file))
    with _network_source(variant, request.fdm_impl, turing) as source:
        turing_parity = _check_turing_rewrite(bundle, manifest, variant, source) if turing else None
        parser = _parse(flavour, network, logger, source)
    config = builder.create_builder_config()
    config.add_optimization_profile(_batch_profile(flavour, builder, network, batch))
    target = flavour.apply_targets(config, request.targets)
    if request.optimization_level is not None:
        config.builder_optimization_level = request.optimization_level
    cache_loaded = _attach_timing_cache(flavour, config, bundle, manifest)
    monitor = flavour.progress_monitor(request.progress) if request.progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errors = "\n  ".join(logger.errors) or "(TensorRT logged no error; rerun with -v for its log)"
        raise EngineBuildError(
            f"{flavour.name} {flavour.version} could not build an engine from {variant_file} "
            f"(target {target}); bundle {bundle} is unchanged. The builder said:\n  {errors}"
        )
    cache = flavour.serialized_timing_cache(config) if flavour.has_timing_cache else None
    del parser
    return _Compiled(
        plan, target, _input_shapes(network), time.perf_counter() - started, cache, cache_loaded, turing_parity
    )


def _timing_cache_file(flavour: Flavour) -> str:
    """Timing caches are valid for one TensorRT version (and GPU): one file per flavour and version."""
    return f"{ENGINES_DIR}/timing-{flavour.name}-{flavour.version}.cache"


def _variant(bundle: Path, manifest: Manifest, precision: str) -> Variant:
    variants = manifest.variants
    if precision not in variants:
        how = "`pdsn export`" if precision == "fp32" else f"`pdsn quantize --bundle {bundle} --precision {precision}`"
        raise ValueError(
            f"bundle {bundle} has no {precision} ONNX variant to build from (it has "
            f"{', '.join(sorted(variants)) or 'none'}); make it first with {how}"
        )
    return variants[precision]


@contextlib.contextmanager
def _network_source(variant: Path, fdm_impl: str, turing: bool) -> Iterator[Path]:
    """The ONNX file to parse: the variant itself, or its plugin or Turing rewrite in a temporary folder."""
    if fdm_impl == "native" and not turing:
        yield variant
        return
    import onnx

    if fdm_impl == "plugin":
        from pdsn.engines.fdm_plugin_graph import plugin_model as rewrite
        from pdsn.kernels.fdm_plugin import register_fdm_plugin

        register_fdm_plugin()
    else:
        from pdsn.engines.turing_graph import turing_model as rewrite
    with tempfile.TemporaryDirectory(prefix="pdsn-build-") as folder:
        rewritten = Path(folder) / variant.name
        onnx.save(rewrite(onnx.load(str(variant))), str(rewritten))
        yield rewritten


def _check_turing_rewrite(bundle: Path, manifest: Manifest, variant: Path, rewritten: Path) -> dict:
    """The Turing rewrite against its variant on held-out synthetic faces (ONNX Runtime, FP16 gate)."""
    import numpy as np

    from pdsn.calib.data import SYNTHETIC, load_face_sets
    from pdsn.calib.gates import DEFAULT_GATES, format_variant_table, variant_parity
    from pdsn.model.comparison import onnx_embedder

    contract = manifest.contract
    dictionary = np.load(bundle_file(bundle, manifest, manifest.dictionary_file, "dictionary.file"))
    _, faces = load_face_sets(SYNTHETIC, 0, 32, progress=False, size=(contract.height, contract.width))
    report = variant_parity(
        onnx_embedder(variant, dictionary, contract),
        onnx_embedder(rewritten, dictionary, contract),
        faces,
        DEFAULT_GATES["fp16"],
    )
    if not report["passed"]:
        raise EngineBuildError(
            f"the Turing rewrite of {variant.name} (FP16 GEMMs, since TensorRT-RTX has none in FP32 on "
            f"Turing) missed the FP16 gate against it; no engine was built and bundle {bundle} is unchanged:\n"
            + format_variant_table({"turing rewrite vs variant": report})
        )
    overall = report["overall"]
    return {
        "against": variant.name,
        "gate": report["gate"],
        "cosine_min": overall["cosine_min"],
        "max_abs_error": overall["max_abs_error"],
        "passed": True,
    }


def _parse(flavour: Flavour, network: trt.INetworkDefinition, logger: Any, path: Path) -> trt.OnnxParser:
    parser = flavour.module.OnnxParser(network, logger)
    if parser.parse_from_file(str(path)):
        return parser
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    lines = [f"node {e.node_name() or e.node()!r} ({e.node_operator() or '?'}): {e.desc()}" for e in errors]
    raise EngineBuildError(
        f"{flavour.name} {flavour.version}'s ONNX parser rejected {path.name} with "
        f"{len(lines)} error(s):\n  " + "\n  ".join(lines or logger.errors)
    )


def _batch_profile(
    flavour: Flavour, builder: trt.Builder, network: trt.INetworkDefinition, batch: tuple[int, int, int]
) -> trt.IOptimizationProfile:
    """Batch ``min/opt/max`` for every input whose first dimension is dynamic; others must be static."""
    profile = builder.create_optimization_profile()
    for name, shape in _input_shapes(network).items():
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(
                f"input {name!r} has shape {shape}: only the batch dimension may be dynamic; "
                f"re-export the bundle with `pdsn export`"
            )
        if shape and shape[0] < 0:
            low, opt, high = (flavour.module.Dims([n, *shape[1:]]) for n in batch)
            profile.set_shape(name, low, opt, high)
    return profile


def _input_shapes(network: trt.INetworkDefinition) -> dict[str, list[int]]:
    """Every engine input's shape, -1 for the batch: what the runtime must bind."""
    shapes = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shapes[tensor.name] = [int(tensor.shape[axis]) for axis in range(len(tensor.shape))]
    return shapes


def _attach_timing_cache(flavour: Flavour, config: trt.IBuilderConfig, bundle: Path, manifest: Manifest) -> int:
    """Load the bundle's timing cache for this flavour and version; returns the bytes reused.

    The engines of one flavour and version share one cache file (each build stores the grown cache
    and points them all at it).
    """
    if not flavour.has_timing_cache:
        return 0
    stored = b""
    for key, engine in manifest.engines.items():
        if engine.timing_cache_file and (engine.flavour, engine.version) == (flavour.name, flavour.version):
            what = f"engines.{key}.timing_cache.file"
            stored = bundle_file(bundle, manifest, engine.timing_cache_file, what).read_bytes()
            break
    return len(stored) if flavour.attach_timing_cache(config, stored) and stored else 0
