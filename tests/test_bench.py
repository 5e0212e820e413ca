"""`pdsn bench` end to end on a tiny bundle: every configuration measured, reports written."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from factories import quick_variant

from pdsn.bench.concurrency import SweepConfig
from pdsn.bench.report import markdown, terminal_table, write_results
from pdsn.bench.runner import REFERENCE, BenchConfig, batcher_goals, run_benchmark
from pdsn.calib.gates import PrecisionGate
from pdsn.calib.variants import add_variant
from pdsn.cli import main
from pdsn.runtime import Recognizer


@pytest.fixture(scope="module")
def timing_bundle(tiny_bundle, tmp_path_factory) -> Path:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("bench") / "bundle"))
    add_variant(quick_variant(bundle, gates={"int8": PrecisionGate(min_cosine=1.01)}, enforce_gate=False))
    return bundle


def test_timing_only_variant_is_refused_for_serving(timing_bundle):
    with pytest.raises(ValueError, match="missed its parity gate .* kept for timing only"):
        Recognizer.open(timing_bundle, precision="int8")
    with Recognizer.open(timing_bundle) as auto:
        assert auto.precision == "fp32"
    with Recognizer.open(timing_bundle, precision="int8", allow_ungated=True) as timing:
        assert timing.precision == "int8"


def test_benchmark_measures_every_configuration(timing_bundle):
    config = BenchConfig(
        backends=("onnxruntime",),
        precisions=("fp32", "int8", "fp16"),
        batches=(1, 3),
        seconds=0.05,
        min_iterations=2,
        warmup=1,
    )
    result = run_benchmark(timing_bundle, config, progress=False)
    paths = [(r["path"], r["batch"]) for r in result["rows"]]
    assert paths == [
        (REFERENCE, 1),
        (REFERENCE, 3),
        ("onnxruntime-fp32", 1),
        ("onnxruntime-fp32", 3),
        ("onnxruntime-int8", 1),
        ("onnxruntime-int8", 3),
    ]
    assert "onnxruntime-fp16" in result["skipped"]
    for row in result["rows"]:
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["vs_reference"] > 0
        if row["path"] != REFERENCE:
            assert row["direct"]["throughput_img_s"] > 0 and "overhead_pct" in row
            split = row["split_ms"]
            assert min(split.values()) >= 0 and split["compute"] <= row["max_ms"]
    assert [r["gate_passed"] for r in result["rows"] if r["path"].endswith("int8")] == [False, False]
    assert result["machine"]["cores"] >= 1 and "onnxruntime" in result["machine"]["packages"]
    table = terminal_table(result)
    assert "vs PyTorch" in table and "onnxruntime-int8" in table
    assert markdown(result).count("\n|") >= 7


def test_concurrency_sweep_reports_every_point_and_the_goals(timing_bundle):
    config = BenchConfig(
        backends=("onnxruntime",),
        precisions=("fp32",),
        batches=(1, 2),
        reference=False,
        seconds=0.05,
        min_iterations=2,
        warmup=1,
        sweep=SweepConfig(clients=(1, 2), delays_ms=(0.0, 1.0), max_batch=2, seconds=0.3, warmup_seconds=0.1),
    )
    result = run_benchmark(timing_bundle, config, progress=False)
    points = [(r["max_delay_ms"], r["clients"]) for r in result["concurrency"]]
    assert points == [(0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)]
    for row in result["concurrency"]:
        assert row["requests"] > 0 and row["rejected"] == 0 and max(row["batch_sizes"]) <= 2
        assert row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert 0 <= row["split_ms"]["compute"] <= row["mean_ms"]
        assert row["overhead_ms"] == pytest.approx(row["mean_ms"] - row["split_ms"]["compute"])
    assert result["concurrency"][0]["mean_batch"] == 1.0
    assert [g["goal"] for g in result["goals"]] == ["overhead per request at concurrency 1"]
    assert "concurrency sweep" in terminal_table(result) and "## Concurrency sweep" in markdown(result)


def test_goals_compare_the_sweep_with_the_direct_batch():
    rows = [{"path": "p", "batch": 8, "direct": {"throughput_img_s": 100.0, "p50_ms": 80.0}}]
    sweeps = [
        {"path": "p", "clients": 8, "max_delay_ms": 2.0, "throughput_img_s": 95.0, "p99_ms": 150.0},
        {"path": "p", "clients": 8, "max_delay_ms": 10.0, "throughput_img_s": 85.0, "p99_ms": 100.0},
        {"path": "p", "clients": 1, "max_delay_ms": 0.0, "overhead_ms": 0.7},
    ]
    goals = batcher_goals(rows, sweeps)
    assert [(g.get("throughput_ratio"), g.get("p99_bound_ms"), g["met"]) for g in goals] == [
        (0.95, 162.0, True),
        (0.85, 170.0, False),
        (None, None, False),
    ]


def test_bench_command_writes_json_markdown_and_plot(timing_bundle, tmp_path, capsys):
    code = main(
        [
            "bench",
            "--bundle",
            str(timing_bundle),
            "--backends",
            "onnxruntime",
            "--precisions",
            "fp32",
            "--batches",
            "2",
            "--seconds",
            "0.05",
            "--clients",
            "1,2",
            "--delays",
            "0",
            "--max-batch",
            "2",
            "--sweep-seconds",
            "0.3",
            "--out",
            str(tmp_path),
            "--name",
            "tiny",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert {r["path"] for r in result["rows"]} == {REFERENCE, "onnxruntime-fp32"}
    assert len(result["concurrency"]) == 2 and len(result["goals"]) == 1
    assert "| onnxruntime-fp32" in (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_no_plot_without_a_sweep(timing_bundle, tmp_path):
    config = BenchConfig(
        backends=("onnxruntime",),
        precisions=("fp32",),
        batches=(1,),
        reference=False,
        seconds=0.02,
        min_iterations=2,
        warmup=1,
    )
    written = write_results(run_benchmark(timing_bundle, config, progress=False), tmp_path, "plain")
    assert [p.suffix for p in written] == [".json", ".md"]


@pytest.mark.parametrize("argv", [["--batches", "0"], ["--batches", "a,b"], ["--delays", "-1"], ["--clients", "x"]])
def test_bad_bench_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        main(["bench", *argv])
    assert "expected" in capsys.readouterr().err


def test_gallery_benchmark_runs_exact_and_through_hnsw(tiny_bundle, tmp_path):
    pytest.importorskip("usearch")
    from pdsn.bench.gallery import GalleryBenchConfig, gallery_markdown, run_gallery_benchmark

    config = GalleryBenchConfig(sizes=(20, 60), probes=5, new_patterns=1, enroll_batch=10, ann_min_faces=50)
    result = run_gallery_benchmark(tiny_bundle, config, tmp_path / "galleries", progress=True)
    small, large = result["rows"]
    assert "ann" not in small and large["ann"]["indexes"] == 3 and large["ann"]["cached"]["p50_ms"] > 0
    steal = [row["cached"]["steal_pct"] for row in (small, large, large["ann"])]
    assert all(math.isnan(s) or 0.0 <= s <= 100.0 for s in steal)
    text = gallery_markdown(result)
    assert "Through HNSW indexes" in text and "| 60 |" in text


def test_photo_benchmark_times_detection_beside_facenet_pytorch_and_splits_the_path(tiny_bundle, tmp_path):
    from pdsn.bench.photos import STAGES, PhotoBenchConfig, photos_markdown, run_photo_benchmark

    config = PhotoBenchConfig(frames=((640, 480),), backends=("onnxruntime",), seconds=0.2, gallery_size=20)
    result = run_photo_benchmark(tiny_bundle, config, tmp_path, progress=False)
    (detection,) = result["detection"]
    assert detection["faces"] == detection["peer"]["faces"] >= 6
    assert detection["ratio"] == pytest.approx(
        detection["ours"]["throughput_img_s"] / detection["peer"]["throughput_img_s"]
    )
    (path,) = result["path"]
    assert path["faces"] == detection["faces"] and path["gallery_identities"] == 20 + path["faces"]
    assert set(path["stages_ms"]) == set(STAGES) and path["total_ms"] == pytest.approx(sum(path["stages_ms"].values()))
    assert [g["met"] for g in result["goals"]] == [detection["ratio"] >= 2.0]
    text = photos_markdown(result)
    assert "| 640x480 | onnxruntime |" in text and "pdsn bench --photos" in text
