"""The TensorRT backend: which engine it runs, what it refuses, and (on a GPU) what it computes.

This machine has TensorRT-RTX (it builds engines without a GPU) but no GPU, so the tests here
run every check that comes before the GPU: engine selection, flavour/version/GPU mismatch,
profile limits, and the clear error when no GPU is present. The GPU-marked tests need a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gpu import has_gpu

from pdsn.engines.build import EngineBuildRequest, build_engine
from pdsn.model.bundle_format import read_manifest, write_manifest
from pdsn.model.sample_faces import occlusion_mix, seeded_faces
from pdsn.runtime import BackendUnavailableError, Recognizer
from pdsn.runtime.backends.engines import EngineMismatchError, check_engine, find_engine


def entry(**changes) -> dict:
    base = {
        "file": "engines/e.engine",
        "flavour": "tensorrt-rtx",
        "version": "1.7.1.116",
        "precision": "fp16",
        "compute_capability": "portable",
        "profile": {"min": 1, "opt": 16, "max": 128},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "version", "capability", "message"),
    [
        ({}, None, None, "needs tensorrt-rtx 1.7.1.116, which is not installed: `pip install"),
        ({}, "1.8.0.1", None, "built with tensorrt-rtx 1.7.1.116, but 1.8.0.1 is installed"),
        (
            {},
            "1.7.1.116",
            "9.0",
            "built for compute capability 8.0, 8.6, 8.9, 12.0 \\(portable\\), but this GPU is 9.0",
        ),
        ({"compute_capability": "sm75-sm86"}, "1.7.1.116", "8.9", "7.5, 8.6 \\(sm75-sm86\\)"),
        (
            {"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "sm90"},
            "10.13.0",
            "8.9",
            "compute capability 9.0 \\(sm90\\)",
        ),
        (
            {"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "ampere-plus"},
            "10.13.0",
            "7.5",
            "Ampere or newer",
        ),
    ],
)
def test_engines_this_machine_cannot_run_are_refused(changes, version, capability, message):
    with pytest.raises(BackendUnavailableError, match=message) as caught:
        check_engine(entry(**changes), version, capability)
    assert "pdsn build" in str(caught.value) or "pip install" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "version", "capability"),
    [
        ({}, "1.7.1.116", "8.6"),
        ({}, "1.7.1.116", "12.1"),
        ({"compute_capability": "sm75-sm86"}, "1.7.1.116", "7.5"),
        ({"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "ampere-plus"}, "10.13.0", "9.0"),
        ({"flavour": "tensorrt", "version": "10.8.0", "version_compatible": True}, "10.13.0", None),
    ],
)
def test_engines_this_machine_can_run_pass(changes, version, capability):
    check_engine(entry(**changes), version, capability)


def test_a_missing_engine_says_how_to_build_it():
    manifest = {"engines": {"e": entry(precision="fp32")}}
    assert find_engine(manifest, "tensorrt-rtx", "fp32")["precision"] == "fp32"
    with pytest.raises(ValueError, match="no tensorrt-rtx engine for int8 .*tensorrt-rtx/fp32.*pdsn build"):
        find_engine(manifest, "tensorrt-rtx", "int8")


@pytest.fixture(scope="module")
def engine_bundle(tiny_bundle, tmp_path_factory) -> Path:
    pytest.importorskip("tensorrt_rtx_bindings")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("trt") / "bundle"))
    build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt-rtx", batch=(1, 8, 16), progress=None))
    return bundle


@pytest.mark.skipif(has_gpu(), reason="checks the no-GPU path")
def test_no_gpu_is_a_clear_error(engine_bundle):
    with pytest.raises(BackendUnavailableError, match="no usable NVIDIA GPU here|needs cuda-python"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16)


def test_engine_selection_and_its_limits(engine_bundle, tmp_path):
    with pytest.raises(ValueError, match="runs on device='cuda', not 'cpu'"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cpu", precision="fp32", max_batch=16)
    with pytest.raises(ValueError, match="max_batch 64 exceeds the engine's profile \\(batch 1..16\\)"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32")
    with pytest.raises(ValueError, match="precision 'fp16' is not in bundle"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp16")
    with pytest.raises(ValueError, match="no tensorrt engine of a gated variant"):
        Recognizer.open(engine_bundle, backend="tensorrt", device="cuda")
    other = Path(shutil.copytree(engine_bundle, tmp_path / "other"))
    manifest = read_manifest(other)
    for built in manifest["engines"].values():
        built["version"] = "0.9.0"
    write_manifest(other, manifest)
    with pytest.raises(EngineMismatchError, match="built with tensorrt-rtx 0.9.0, but .* is installed"):
        Recognizer.open(other, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16)


@pytest.mark.gpu
def test_engine_matches_onnx_runtime_on_a_gpu(engine_bundle):
    if not has_gpu():
        pytest.skip("needs an NVIDIA GPU")
    faces, masks = seeded_faces(11, seed=3), occlusion_mix(11, seed=3)
    with Recognizer.open(engine_bundle, precision="fp32") as reference:
        expected = reference.embed(faces, masks)
    with Recognizer.open(
        engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16
    ) as recognizer:
        for _ in range(3):  # graphs are captured on the first call per bucket, replayed after
            got = recognizer.embed(faces, masks)
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
        assert recognizer.backend_info["buckets"] == [1, 2, 4, 8, 16]
