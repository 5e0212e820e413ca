"""`pdsn gpu-check` (bench/gpu_check.py) and scripts/gpu-check.sh, checked without a GPU: the smoke mode, the
verdict on a gpu test report, and the script's refusal where no GPU is found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu import has_gpu
from test_fdm_kernel_host import build_host_kernel

from pdsn.bench.gpu_check import BASELINE, COMPILED, SMOKE, CheckConfig, GpuCheck, finish, judge_gpu_tests
from pdsn.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
MODEL_PATHS = {BASELINE, "pytorch-eager-fp16", COMPILED}
FDM_INLINED = {"fdm-inlined-fp32", "fdm-inlined-fp16"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[int, dict, str]:
    """One smoke run on the CPU: (exit status, JSON results, Markdown)."""
    out = tmp_path_factory.mktemp("gpu-check")
    status = main(["gpu-check", "--device", "cpu", "--smoke", "--out", str(out)])
    (json_file,) = out.glob("gpu-*-smoke.json")
    return status, json.loads(json_file.read_text()), json_file.with_suffix(".md").read_text()


def test_smoke_run_measures_every_path_and_passes(smoke):
    status, result, _ = smoke
    assert status == 0 and result["mandatory_passed"]
    assert result["device"]["type"] == "cpu" and result["device"]["name"] in result["title"]
    assert result["model"]["architecture"] == "lresnet-ir-tiny"
    measured = (MODEL_PATHS - {COMPILED}) | FDM_INLINED
    assert {(r["path"], r["batch"]) for r in result["rows"]} == {
        *((path, batch) for path in measured for batch in (1, 2)),
        (COMPILED, 1),  # the smoke run's compile budget is 0 s: the first batch only
    }
    assert result["status"]["fdm-kernel-fp32"] == result["status"]["fdm-kernel-fp16"] == "skipped: no GPU"
    assert all(result["status"][path] == "ok" for path in measured)
    assert result["status"][COMPILED] == "partial: the compile budget of 0 s ran out before batch 2"


def test_ratios_are_against_eager_fp32_at_the_same_batch(smoke):
    rows = smoke[1]["rows"]
    baseline = {r["batch"]: r["throughput_img_s"] for r in rows if r["path"] == BASELINE}
    for row in (r for r in rows if r["part"] == "model"):
        assert row["vs_eager_fp32"] == pytest.approx(row["throughput_img_s"] / baseline[row["batch"]])
    assert all(r["compile_s"] > 0 for r in rows if r["path"] == COMPILED)
    assert all(r["equals_reference"] for r in rows if r["part"] == "fdm")


def test_markdown_has_the_device_the_versions_and_one_line_per_row(smoke):
    _, result, text = smoke
    assert text.startswith(f"# {result['title']}\n")
    assert f"torch {result['versions']['torch']}" in text and result["date"] in text
    table_rows = [line for line in text.splitlines() if line.startswith(("| pytorch-", "| fdm-"))]
    assert len(table_rows) == len(result["rows"])
    assert "fdm-kernel-fp32: skipped: no GPU" in text and "Mandatory paths: passed" in text


def test_a_torch_compile_failure_is_recorded_not_fatal(tmp_path):
    check = GpuCheck(CheckConfig(**{**SMOKE, "device": "cpu", "compile_backend": "no-such-backend"}))
    check.compiled()
    assert check.result["status"][COMPILED].startswith("failed: ")
    check.result["status"].update({BASELINE: "ok", "fdm-kernel-fp32": "skipped: no GPU"})
    assert finish(check.result)["mandatory_passed"]
    check.result["status"]["fdm-kernel-fp16"] = "failed: differs from the numpy reference at batch 8"
    assert not finish(check.result)["mandatory_passed"]


def test_kernel_rows_launch_the_kernel_as_the_runtime_does(tmp_path):
    """The kernel path's launch arguments and checks, on the host-compiled kernel instead of a GPU."""
    kernel = build_host_kernel(tmp_path)
    check = GpuCheck(CheckConfig(**{**SMOKE, "device": "cpu"}))
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        features = torch.randn((2, *check.feature_shape)).to(dtype)
        equal = check.fdm_batch(kernel, precision, features)
        assert equal == {f"fdm-inlined-{precision}": True, f"fdm-kernel-{precision}": True}
    rows = [r for r in finish(check.result)["rows"] if r["path"].startswith("fdm-kernel")]
    assert [(r["path"], r["batch"]) for r in rows] == [("fdm-kernel-fp32", 2), ("fdm-kernel-fp16", 2)]
    assert all(r["equals_reference"] and r["vs_inlined"] > 0 for r in rows)


@pytest.mark.skipif(has_gpu(), reason="checks the no-GPU refusal")
def test_device_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert main(["gpu-check", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "pdsn gpu-check: error: no CUDA GPU is visible to torch" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _junit(path: Path, cases: str) -> Path:
    path.write_text(f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


PASSED_REQUIRED = (
    '<testcase classname="tests.test_fdm_kernel" name="test_kernel_on_the_gpu_equals_the_reference[float32]"/>'
    '<testcase classname="tests.test_cuda_memory" name="test_pinned_round_trip_through_device_memory"/>'
)


def test_a_report_of_passed_gpu_tests_passes(tmp_path):
    skipped_tensorrt = (
        '<testcase classname="tests.test_tensorrt_backend" name="test_engine_matches_onnx_runtime_on_a_gpu">'
        '<skipped message="could not import tensorrt_rtx_bindings"/></testcase>'
    )
    unimportable = (
        '<testcase classname="" name="tests.test_dictionary"><error message="collection failure">'
        "E   ModuleNotFoundError: No module named 'onnx'</error></testcase>"
    )
    report = _junit(tmp_path / "r.xml", PASSED_REQUIRED + skipped_tensorrt + unimportable)
    problems, warnings = judge_gpu_tests(report, ROOT)
    assert problems == []
    assert warnings == [
        "tests/test_dictionary.py could not be imported: E   ModuleNotFoundError: No module named 'onnx'"
    ]


def test_a_skipped_kernel_test_or_a_failure_fails_the_report(tmp_path):
    cases = (
        '<testcase classname="tests.test_fdm_kernel" name="test_kernel_on_the_gpu_equals_the_reference[float16]">'
        '<skipped message="no NVIDIA GPU here"/></testcase>'
        '<testcase classname="tests.test_cuda_memory" name="test_out_of_memory_is_a_clear_error">'
        '<failure message="assert False"/></testcase>'
        '<testcase classname="" name="tests.test_tensorrt_backend"><error message="collection failure">'
        "E   ImportError: boom</error></testcase>"
    )
    problems, _ = judge_gpu_tests(_junit(tmp_path / "r.xml", cases), ROOT)
    assert problems == [
        "tests/test_fdm_kernel.py::test_kernel_on_the_gpu_equals_the_reference[float16] was skipped on a GPU "
        "machine: no NVIDIA GPU here",
        "tests/test_cuda_memory.py::test_out_of_memory_is_a_clear_error: failure: assert False",
        "tests/test_tensorrt_backend.py could not be imported: E   ImportError: boom",
        "no gpu test passed",
    ]


def test_a_missing_report_or_a_missing_required_file_fails(tmp_path):
    assert judge_gpu_tests(tmp_path / "none.xml")[0] == [
        f"no test report at {tmp_path / 'none.xml'}: pytest did not run or did not finish (see its output)"
    ]
    only_memory = '<testcase classname="tests.test_cuda_memory" name="test_pinned_round_trip_through_device_memory"/>'
    problems, _ = judge_gpu_tests(_junit(tmp_path / "r.xml", only_memory), ROOT)
    assert problems == ["tests/test_fdm_kernel.py: no gpu test of it is in the report"]


def test_the_scripts_command_needs_no_runtime_library(tmp_path):
    """As scripts/gpu-check.sh runs it: ``python -m pdsn gpu-check`` with ``pdsn`` a link to the repository and
    Pillow, ONNX Runtime, OpenVINO and onnx not importable (the GPU machine may have only torch, numpy and
    cuda-python)."""
    (tmp_path / "pdsn").symlink_to(ROOT)
    code = (
        "import importlib.abc, runpy, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('PIL', 'onnxruntime', 'openvino', 'onnx'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv[0] = 'pdsn'\n"
        "runpy.run_module('pdsn', run_name='__main__', alter_sys=True)\n"
    )
    report = _junit(tmp_path / "r.xml", PASSED_REQUIRED)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'tests'}"}
    result = subprocess.run(
        [sys.executable, "-c", code, "gpu-check", "--check-test-report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every gpu test that can run without TensorRT ran and passed" in result.stdout


def test_the_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(has_gpu(), reason="checks the no-GPU refusal")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="the script needs coreutils' timeout")
def test_the_script_refuses_clearly_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no NVIDIA GPU found" in result.stderr
    assert "FAILED at step 1 (device)" in result.stderr and "nothing else was run" in result.stderr
    assert not (tmp_path / "out").exists()
