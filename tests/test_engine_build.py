"""``pdsn build``: real TensorRT-RTX engines for every variant, the manifest record, bad input.

TensorRT-RTX builds ahead of time without a GPU, so these tests build real engines. The
data-centre flavour needs a GPU to build; its configuration path (compatibility modes, timing
cache reuse, naming) runs here against a stand-in module with the same API.
"""

from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
from factories import quick_variant
from fake_tensorrt import FakeBuilder, install_fake_tensorrt

from pdsn.cli import main
from pdsn.engines.build import EngineBuildError, EngineBuildRequest, build_engine, check_batch_profile
from pdsn.engines.flavour import BuildTargets, TensorRTUnavailableError, load_flavour
from pdsn.model.bundle_format import BundleIntegrityError, sha256_file
from pdsn.model.manifest import read_manifest, write_manifest
from pdsn.runtime.bundle import open_bundle

PRECISIONS = ("fp32", "fp16", "int8")
TINY_BATCH = (1, 4, 8)


def _copy(bundle: Path, tmp_path: Path, name: str = "bundle") -> Path:
    return Path(shutil.copytree(bundle, tmp_path / name))


def _snapshot(bundle: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rtx():
    return pytest.importorskip("tensorrt_rtx_bindings")


@pytest.fixture(scope="module")
def built(rtx, quantized, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Every variant of the tiny bundle built with TensorRT-RTX on the default profile."""
    bundle = _copy(quantized, tmp_path_factory.mktemp("engines"))
    entries = {
        p: build_engine(EngineBuildRequest(bundle, p, flavour="tensorrt-rtx", progress=None)) for p in PRECISIONS
    }
    return bundle, entries


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_variant_builds_a_recorded_engine(built, rtx, precision):
    bundle, entries = built
    entry = entries[precision]
    expected_name = f"engines/tensorrt-rtx-{rtx.__version__}-portable-{precision}-b1-16-128.engine"
    assert entry["file"] == expected_name
    engine = bundle / entry["file"]
    assert entry["bytes"] == engine.stat().st_size > 100_000
    assert entry["sha256"] == sha256_file(engine)
    assert (entry["flavour"], entry["version"], entry["compute_capability"]) == (
        "tensorrt-rtx",
        rtx.__version__,
        "portable",
    )
    assert entry["profile"] == {"min": 1, "opt": 16, "max": 128} and entry["fdm_impl"] == "native"
    assert entry["build_seconds"] > 0 and entry["timing_cache"] is None, "RTX's timing cache is a no-op"
    manifest = read_manifest(bundle).document()
    assert manifest["engines"][Path(expected_name).stem] == entry
    assert manifest["files"][entry["file"]] == {"sha256": entry["sha256"], "bytes": entry["bytes"]}
    assert entry["variant"]["file"] == manifest["variants"][precision]["file"]
    assert entry["variant"]["sha256"] == manifest["files"][entry["variant"]["file"]]["sha256"]


def test_the_built_bundle_opens_with_every_hash_checked(built):
    bundle, entries = built
    opened = open_bundle(bundle, verify=True)
    assert {e.file for e in opened.manifest.engines.values()} == {e["file"] for e in entries.values()}
    assert not list((bundle / "engines").glob(".*")), "no partial files left behind"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "truncated or replaced"),
        (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], r"SHA-256 .*\(modified after export\)"),
    ],
)
def test_a_damaged_engine_fails_the_bundle_check(built, tmp_path, damage, message):
    bundle = _copy(built[0], tmp_path)
    engine = bundle / built[1]["fp16"]["file"]
    engine.write_bytes(damage(engine.read_bytes()))
    with pytest.raises(BundleIntegrityError, match=message):
        open_bundle(bundle, verify=True)


def test_cli_build_reports_progress_and_the_engine(rtx, quantized, tmp_path, capsys):
    bundle = _copy(quantized, tmp_path)
    assert (
        main(
            [
                "build",
                "--bundle",
                str(bundle),
                "--precision",
                "int8",
                "--flavour",
                "tensorrt-rtx",
                "--batch",
                "1,4,8",
                "--compute-capability",
                "8.6",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert f"built engines/tensorrt-rtx-{rtx.__version__}-sm86-int8-b1-4-8.engine" in out
    assert "int8, target sm86, batch 1..8 (tuned for 4)" in out
    assert "s] Building engine" in err and "Building engine: done" in err
    entry = next(iter(read_manifest(bundle).document()["engines"].values()))
    assert entry["compute_capability"] == "sm86" and entry["profile"] == {"min": 1, "opt": 4, "max": 8}


def test_progress_lines_carry_the_elapsed_time(rtx, quantized, tmp_path):
    lines: list[str] = []
    build_engine(
        EngineBuildRequest(
            _copy(quantized, tmp_path), "fp32", flavour="tensorrt-rtx", batch=TINY_BATCH, progress=lines.append
        )
    )
    layout = [re.fullmatch(r"\[ *\d+\.\d s\] ( *)(\S.*)", line) for line in lines]
    assert all(layout), lines
    assert layout[0].group(2).startswith("Building engine") and layout[-1].group(2) == "Building engine: done"
    assert max(len(m.group(1)) for m in layout) == 4, "phases two levels deep, no deeper"


def test_a_rebuild_replaces_the_engine_and_its_record(built, tmp_path):
    bundle = _copy(built[0], tmp_path)
    before = read_manifest(bundle).document()["engines"]
    again = build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt-rtx", progress=None))
    after = read_manifest(bundle).document()["engines"]
    old = built[1]["fp32"]["file"]
    assert sorted(after) == sorted(before) and again["file"] != old, "a new engine never overwrites a listed one"
    assert not (bundle / old).exists(), "the replaced engine is removed after the manifest switch"
    open_bundle(bundle, verify=True)


def test_turing_builds_run_both_gemms_in_fp16_after_a_parity_check(rtx, quantized, tmp_path):
    """RTX has no FP32 GEMM for Turing: the FDM count (exactly) and the head (gated) run in FP16."""
    bundle = _copy(quantized, tmp_path)
    for precision in ("fp32", "fp16", "int8"):
        entry = build_engine(
            EngineBuildRequest(
                bundle,
                precision,
                flavour="tensorrt-rtx",
                batch=TINY_BATCH,
                progress=None,
                targets=BuildTargets(compute_capabilities=("7.5",)),
            )
        )
        assert entry["compute_capability"] == "sm75" and entry["file"].endswith(f"sm75-{precision}-b1-4-8.engine")
        turing = entry["turing_fp16_gemms"]
        assert turing["passed"] and turing["cosine_min"] >= 0.9995 and turing["gate"] == {"min_cosine": 0.9995}
    portable = build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt-rtx", batch=TINY_BATCH, progress=None))
    assert portable["turing_fp16_gemms"] is None
    open_bundle(bundle, verify=True)


def test_a_turing_rewrite_that_misses_its_gate_is_refused(rtx, quantized, tmp_path, monkeypatch):
    from pdsn.engines import turing_graph

    rewrite = turing_graph.turing_model

    def damaged(model):
        rewritten = rewrite(model)
        for initializer in rewritten.graph.initializer:
            if initializer.name.endswith("weight_fp16"):
                array = onnx.numpy_helper.to_array(initializer)
                initializer.CopyFrom(onnx.numpy_helper.from_array(array[::-1].copy(), initializer.name))
        return rewritten

    monkeypatch.setattr(turing_graph, "turing_model", damaged)
    bundle = _copy(quantized, tmp_path)
    before = _snapshot(bundle)
    with pytest.raises(EngineBuildError, match=r"(?s)Turing rewrite of model.onnx .* missed the FP16 gate.*unchanged"):
        build_engine(
            EngineBuildRequest(
                bundle,
                "fp32",
                flavour="tensorrt-rtx",
                batch=TINY_BATCH,
                progress=None,
                targets=BuildTargets(compute_capabilities=("7.5",)),
            )
        )
    assert _snapshot(bundle) == before


def test_parser_errors_are_listed_and_change_nothing(rtx, tiny_bundle, tmp_path):
    """A model whose FdmGatherMul has no function body (and no plugin registered) fails to parse."""
    bundle = _copy(tiny_bundle, tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    del model.functions[:]
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle).document())
    before = _snapshot(bundle)
    with pytest.raises(EngineBuildError, match=r"(?s)parser rejected model.onnx with \d+ error.*FdmGatherMul"):
        build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt-rtx", progress=None))
    assert _snapshot(bundle) == before


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ((0, 1, 2), r"--batch 0,1,2: expected 1 <= MIN <= OPT <= MAX"),
        ((4, 2, 8), r"--batch 4,2,8: expected 1 <= MIN <= OPT <= MAX"),
        ((1, 8, 4), r"--batch 1,8,4: expected 1 <= MIN <= OPT <= MAX"),
        ((1, 2), r"--batch 1,2: expected three integers"),
    ],
)
def test_bad_batch_profiles(batch, message):
    with pytest.raises(ValueError, match=message):
        check_batch_profile(batch)


def test_cli_bad_batch_and_missing_variant_exit_2(tiny_bundle, capsys):
    assert main(["build", "--bundle", str(tiny_bundle), "--batch", "8,4,2"]) == 2
    assert "--batch 8,4,2: expected 1 <= MIN <= OPT <= MAX" in capsys.readouterr().err
    assert main(["build", "--bundle", str(tiny_bundle), "--precision", "int8", "--flavour", "tensorrt-rtx"]) == 2
    err = capsys.readouterr().err
    assert "has no int8 ONNX variant to build from (it has fp32)" in err
    assert f"pdsn quantize --bundle {tiny_bundle} --precision int8" in err


def test_a_tampered_bundle_is_refused_before_building(quantized, tmp_path):
    bundle = _copy(quantized, tmp_path)
    (bundle / "model.fp16.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleIntegrityError, match="model.fp16.onnx"):
        build_engine(EngineBuildRequest(bundle, "fp16", flavour="tensorrt-rtx", progress=None))


@pytest.mark.parametrize(
    ("targets", "fdm_impl", "message"),
    [
        (
            BuildTargets(hardware_compatibility="ampere-plus"),
            "native",
            "TensorRT-RTX has no hardware- or version-compatible",
        ),
        (BuildTargets(version_compatible=True), "native", "TensorRT-RTX has no hardware- or version-compatible"),
        (
            BuildTargets(compute_capabilities=("9.0",)),
            "native",
            "cannot target compute capability 9.0; it knows .*SM86",
        ),
        (BuildTargets(compute_capabilities=("sm86",)), "native", "expected MAJOR.MINOR such as 8.6"),
        (BuildTargets(), "plugin", "--fdm-impl plugin: tensorrt-rtx .* has no Python plugins"),
    ],
)
def test_options_rtx_would_ignore_are_refused(rtx, quantized, targets, fdm_impl, message):
    with pytest.raises(ValueError, match=message):
        build_engine(
            EngineBuildRequest(
                quantized, "fp32", flavour="tensorrt-rtx", targets=targets, fdm_impl=fdm_impl, progress=None
            )
        )


@pytest.mark.parametrize("flavour", ["auto", "tensorrt", "tensorrt-rtx"])
def test_no_tensorrt_installed_names_the_install_command(monkeypatch, tiny_bundle, flavour):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs leaves
    hint = (
        "pip install tensorrt"
        if flavour == "tensorrt"
        else "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
    )
    with pytest.raises(TensorRTUnavailableError, match=hint):
        build_engine(EngineBuildRequest(tiny_bundle, "fp32", flavour=flavour, progress=None))


def test_unknown_flavour():
    with pytest.raises(ValueError, match="--flavour 'onnx' is not one of"):
        load_flavour("onnx")


# --- data-centre TensorRT, through a stand-in with its API -------------------------------------


@pytest.fixture
def datacentre(monkeypatch):
    return install_fake_tensorrt(monkeypatch)


def test_datacentre_build_keeps_and_reuses_its_timing_cache(datacentre, quantized, tmp_path):
    bundle = _copy(quantized, tmp_path)
    first = build_engine(EngineBuildRequest(bundle, "fp16", flavour="auto", progress=None))
    assert first["file"] == "engines/tensorrt-10.13.0.35-sm90-fp16-b1-16-128.engine"
    assert first["compute_capability"] == "sm90"
    cache = first["timing_cache"]
    assert cache == {"file": "engines/timing-tensorrt-10.13.0.35.cache", "loaded_bytes": 0}
    assert (bundle / cache["file"]).read_bytes() == b"+timings"
    second = build_engine(EngineBuildRequest(bundle, "int8", flavour="tensorrt", progress=None))
    assert second["timing_cache"]["loaded_bytes"] == len(b"+timings"), "the second build reads the cache"
    grown = second["timing_cache"]["file"]
    assert (bundle / grown).read_bytes() == b"+timings+timings" and not (bundle / cache["file"]).exists()
    manifest = read_manifest(bundle).document()
    assert grown in manifest["files"] and {e["timing_cache"]["file"] for e in manifest["engines"].values()} == {grown}
    open_bundle(bundle, verify=True)


def test_datacentre_cache_from_another_gpu_is_set_aside(datacentre, quantized, tmp_path):
    bundle = _copy(quantized, tmp_path)
    cache = build_engine(EngineBuildRequest(bundle, "fp16", flavour="tensorrt", progress=None))["timing_cache"]
    (bundle / cache["file"]).write_bytes(b"other-gpu")
    write_manifest(bundle, read_manifest(bundle).document())
    entry = build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt", progress=None))
    assert entry["timing_cache"]["loaded_bytes"] == 0
    assert FakeBuilder.configs[-1].cache.blob == b""


def test_datacentre_compatibility_modes(datacentre, quantized, tmp_path):
    bundle = _copy(quantized, tmp_path)
    targets = BuildTargets(hardware_compatibility="ampere-plus", version_compatible=True)
    lines: list[str] = []
    entry = build_engine(
        EngineBuildRequest(
            bundle,
            "fp32",
            flavour="tensorrt",
            targets=targets,
            batch=TINY_BATCH,
            optimization_level=5,
            progress=lines.append,
        )
    )
    config = FakeBuilder.configs[-1]
    assert config.hardware_compatibility_level == "AMPERE_PLUS" and config.flags == {"VERSION_COMPATIBLE"}
    assert config.builder_optimization_level == 5
    assert config.profiles[0].shapes == {
        "image": ((1, 112, 96, 3), (4, 112, 96, 3), (8, 112, 96, 3)),
        "occlusion": ((1, 25), (4, 25), (8, 25)),
    }, "one profile over the batch; the dictionary's shape is fixed"
    assert entry["file"] == (
        "engines/tensorrt-10.13.0.35-ampere-plus-fp32-b1-4-8-hw-ampere-plus-version-compatible.engine"
    )
    assert (entry["hardware_compatibility"], entry["version_compatible"]) == ("ampere-plus", True)
    assert lines[-1].endswith("Building engine: done")


def test_datacentre_refuses_rtx_only_options_and_old_versions(datacentre, quantized):
    def build_for(targets: BuildTargets) -> None:
        build_engine(EngineBuildRequest(quantized, "fp32", flavour="tensorrt", progress=None, targets=targets))

    with pytest.raises(ValueError, match="--compute-capability is for TensorRT-RTX"):
        build_for(BuildTargets(compute_capabilities=("8.6",)))
    del datacentre.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    with pytest.raises(ValueError, match="same-cc needs TensorRT 10.9 or later"):
        build_for(BuildTargets(hardware_compatibility="same-cc"))
    datacentre.__version__ = "10.7.0.23"
    with pytest.raises(TensorRTUnavailableError, match="TensorRT 10.7.0.23 is too old: this builder needs 10.8"):
        load_flavour("tensorrt")


# --- the default model -------------------------------------------------------------------------


@pytest.mark.slow
def test_default_lresnet50e_ir_builds_every_precision(rtx, tmp_path, capsys):
    """The full model: export with a short parity check, quick variants, then three real builds."""
    from pdsn.calib.variants import add_variant
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    bundle = export_bundle(ExportRequest(out=tmp_path / "default", parity_faces=2, weights="seeded")).bundle
    for precision in ("fp16", "int8"):
        add_variant(quick_variant(bundle, precision, samples=8, holdout=4, enforce_gate=False))
    minimum_mib = {"fp32": 150, "fp16": 90, "int8": 60}  # weights: 4, 2 and about 1 byte per parameter
    for precision in PRECISIONS:
        entry = build_engine(EngineBuildRequest(bundle, precision, flavour="tensorrt-rtx", progress=None))
        with capsys.disabled():
            print(
                f"\nLResNet50E-IR {precision}: built in {entry['build_seconds']:.1f} s, "
                f"{entry['bytes'] / 2**20:.1f} MiB"
            )
        assert entry["bytes"] > minimum_mib[precision] * 2**20
    assert len(open_bundle(bundle, verify=True).manifest.engines) == 3
