"""`pdsn bench` end to end on a tiny bundle: every configuration measured, reports written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pdsn.bench.report import markdown, terminal_table
from pdsn.bench.runner import REFERENCE, BenchConfig, run_benchmark
from pdsn.calib.gates import PrecisionGate
from pdsn.calib.variants import VariantRequest, add_variant
from pdsn.cli import main
from pdsn.runtime import Recognizer


@pytest.fixture(scope="module")
def timing_bundle(tiny_bundle, tmp_path_factory) -> Path:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("bench") / "bundle"))
    add_variant(VariantRequest(bundle, "int8", calib="synthetic", method="minmax", samples=16, holdout=8,
                               gates={"int8": PrecisionGate(min_cosine=1.01)}, enforce_gate=False, progress=False))
    return bundle


def test_timing_only_variant_is_refused_for_serving(timing_bundle):
    with pytest.raises(ValueError, match="missed its parity gate .* kept for timing only"):
        Recognizer.open(timing_bundle, precision="int8")
    with Recognizer.open(timing_bundle) as auto:
        assert auto.precision == "fp32"
    with Recognizer.open(timing_bundle, precision="int8", allow_ungated=True) as timing:
        assert timing.precision == "int8"


def test_benchmark_measures_every_configuration(timing_bundle):
    config = BenchConfig(backends=("onnxruntime",), precisions=("fp32", "int8", "fp16"), batches=(1, 3),
                         seconds=0.05, min_iterations=2, warmup=1)
    result = run_benchmark(timing_bundle, config, progress=False)
    paths = [(r["path"], r["batch"]) for r in result["rows"]]
    assert paths == [(REFERENCE, 1), (REFERENCE, 3), ("onnxruntime-fp32", 1), ("onnxruntime-fp32", 3),
                     ("onnxruntime-int8", 1), ("onnxruntime-int8", 3)]
    assert "onnxruntime-fp16" in result["skipped"]
    for row in result["rows"]:
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["vs_reference"] > 0
        if row["path"] != REFERENCE:
            assert row["direct"]["throughput_img_s"] > 0 and "overhead_pct" in row
    assert [r["gate_passed"] for r in result["rows"] if r["path"].endswith("int8")] == [False, False]
    assert result["machine"]["cores"] >= 1 and "onnxruntime" in result["machine"]["packages"]
    table = terminal_table(result)
    assert "vs PyTorch" in table and "onnxruntime-int8" in table
    assert markdown(result).count("\n|") >= 7


def test_bench_command_writes_json_and_markdown(timing_bundle, tmp_path, capsys):
    code = main(["bench", "--bundle", str(timing_bundle), "--backends", "onnxruntime", "--precisions", "fp32",
                 "--batches", "2", "--seconds", "0.05", "--out", str(tmp_path), "--name", "tiny"])
    assert code == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert {r["path"] for r in result["rows"]} == {REFERENCE, "onnxruntime-fp32"}
    assert "| onnxruntime-fp32" in (tmp_path / "tiny.md").read_text()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--batches", "0"], ["--batches", "a,b"]])
def test_bad_bench_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        main(["bench", *argv])
    assert "expected" in capsys.readouterr().err
