"""`pdsn bench-serve` end to end on the tiny bundle (short windows: the figures are not judged here),
and the CPU-steal counter every benchmark window records."""

from __future__ import annotations

import math

import pytest

from pdsn.bench.machine import cpu_counters, steal_percent

pytest.importorskip("uvicorn")


def test_bench_serve_measures_every_route_beside_the_batcher_and_writes_its_report(tiny_bundle, tmp_path):
    from pdsn.bench.serve import ServeBenchConfig, run_serve_benchmark, write_serve_results

    config = ServeBenchConfig(
        backend="onnxruntime", precision="fp32", clients=(1, 2), routes=("v2-binary", "v2-json", "v1-embed"),
        seconds=0.4, warmup_seconds=0.2, rounds=2,
    )  # fmt: skip
    result = run_serve_benchmark(tiny_bundle, config, progress=False)
    paths = [(row["path"], row["clients"]) for row in result["rows"]]
    routes = ["in-process", "v2-binary", "v2-json", "v1-embed"]
    assert paths == [(route, clients) for clients in (1, 2) for route in routes]
    for row in result["rows"]:
        assert row["requests"] > 0 and row["throughput_img_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert len(row["rounds_img_s"]) == 2 and row["requests"] >= 2
        assert row["mean_batch"] >= 1.0 and (math.isnan(row["steal_pct"]) or 0.0 <= row["steal_pct"] <= 100.0)
        if row["path"] != "in-process":
            assert row["vs_in_process"] > 0 and "added_ms" in row
    # Throughput is judged at 8 clients, which this run leaves out.
    overhead = "HTTP overhead per request at 1 client"
    assert {(g["goal"], g["path"]) for g in result["goals"]} == {
        (overhead, "v2-binary"),
        (overhead, "v2-json"),
        (f"{overhead} beyond decoding the PNG", "v1-embed"),
    }
    (embed,) = [r for r in result["rows"] if r["path"] == "v1-embed" and r["clients"] == 1]
    assert embed["decode_ms"] > 0 and embed["added_beyond_decode_ms"] == embed["added_ms"] - embed["decode_ms"]
    written = write_serve_results(result, tmp_path, "serve")
    text = (tmp_path / "serve.md").read_text()
    assert {p.name for p in written} == {"serve.json", "serve.md"} and "| host steal |" in text


def test_bench_serve_refuses_unknown_routes_and_no_rounds():
    from pdsn.bench.serve import ServeBenchConfig

    with pytest.raises(ValueError, match="v3-grpc"):
        ServeBenchConfig(routes=("v2-binary", "v3-grpc"))
    with pytest.raises(ValueError, match="rounds"):
        ServeBenchConfig(rounds=0)


def test_steal_is_the_share_of_cpu_ticks_the_host_took():
    assert steal_percent((10, 1000), (60, 2000)) == pytest.approx(5.0)
    assert math.isnan(steal_percent(None, (1, 2))) and math.isnan(steal_percent((5, 100), (5, 100)))
    counters = cpu_counters()
    if counters is not None:  # Linux
        steal, total = counters
        assert 0 <= steal <= total
