"""`pdsn bench-serve` end to end on the tiny bundle (short windows: the figures are not judged here),
and the CPU-steal counter every benchmark window records."""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
            assert 0 < row["loop_cpu_ms"] <= row["server_cpu_ms"] and row["clients_cpu_ms"] > 0
    # Throughput is judged at 8 clients, which this run leaves out.
    overhead = "HTTP overhead per request at 1 client"
    assert {(g["goal"], g["path"]) for g in result["goals"]} == {
        (overhead, "v2-binary"),
        (overhead, "v2-json"),
        (f"{overhead} beyond decoding the PNG", "v1-embed"),
    }
    (embed,) = [r for r in result["rows"] if r["path"] == "v1-embed" and r["clients"] == 1]
    assert embed["decode_ms"] > 0 and embed["added_beyond_decode_ms"] == embed["added_ms"] - embed["decode_ms"]
    floor = result["floor"]
    assert floor["route"] == "v2-binary" and [row["clients"] for row in floor["rows"]] == [1, 2]
    assert all(row["throughput_img_s"] > 0 and row["loop_cpu_ms"] > 0 for row in floor["rows"])
    written = write_serve_results(result, tmp_path, "serve")
    text = (tmp_path / "serve.md").read_text()
    assert {p.name for p in written} == {"serve.json", "serve.md"} and "| host steal |" in text
    assert "uvicorn alone" in text and "server CPU ms/request (event loop) | clients' CPU ms/request" in text


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


class _Answer(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1: 200 with the body's length; 500 on /fail; /hang-up closes without answering."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/hang-up":
            self.close_connection = True
            return
        answer = str(len(body)).encode()
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_lean_http_clients_keep_a_closed_loop_and_report_every_failure(answering_server):
    from pdsn.bench.http_load import raw_request, run_closed_loop

    assert (
        raw_request("h:1", "/p", b"xyz", {"A": "b"})
        == b"POST /p HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\nA: b\r\n\r\nxyz"
    )
    requests = [("/ok", b"x" * size, {"Content-Type": "application/octet-stream"}) for size in (10, 20_000)]
    records = run_closed_loop(answering_server, requests, 3, lambda: time.sleep(0.3))
    assert len(records) >= 6 and all(sent < answered for sent, answered in records)
    by_client = sorted(records)
    assert len({round(sent, 9) for sent, _ in by_client}) == len(records)  # one answer per request
    with pytest.raises(RuntimeError, match="answered 500"):
        run_closed_loop(answering_server, [("/fail", b"x", {})], 2, lambda: time.sleep(0.3))
    with pytest.raises(RuntimeError, match="closed the connection"):
        run_closed_loop(answering_server, [("/hang-up", b"x", {})], 1, lambda: time.sleep(0.3))


def test_rounds_under_host_steal_are_set_aside_and_run_again(tiny_bundle, monkeypatch):
    import pdsn.bench.serve as bench

    steals = iter([5.0, 3.0, 60.0, 2.0, 1.0, 4.0] + [90.0] * 8)  # (in-process, v2) per round

    def window(clients: int) -> dict:
        figures = {"requests": 10, "throughput_img_s": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.0}
        return {"clients": clients, **figures, "mean_batch": 1.0, "window_spread_pct": 0.0, "steal_pct": next(steals)}

    class NoServer:
        port = 0

        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(bench, "_Server", NoServer)
    monkeypatch.setattr(bench, "closed_loop", lambda recognizer, clients, *args: window(clients))

    def http(server, requests, clients, config, batches=True):
        floor = {"clients": clients, "throughput_img_s": 9000.0, "p50_ms": 0.1, "steal_pct": 0.0}
        return window(clients) if batches else floor  # the uvicorn floor (no batches) takes no steal figure

    monkeypatch.setattr(bench, "_http_loop", http)
    config = bench.ServeBenchConfig(backend="onnxruntime", precision="fp32", clients=(1, 8), routes=("v2-binary",),
                                    rounds=2, max_steal_pct=10.0)  # fmt: skip
    stolen = bench.run_serve_benchmark(tiny_bundle, config, progress=False)  # 8 clients: every try stolen
    assert [row["steal_pct"] for row in stolen["rows"][2:]] == [90.0, 90.0] and len(stolen["set_aside"]) == 3
    assert "in-process/8, v2-binary/8 the hypervisor ran other guests" in bench.markdown(stolen)
    steals = iter([5.0, 3.0, 60.0, 2.0, 1.0, 4.0, 2.0, 2.0, 3.0, 3.0])
    result = bench.run_serve_benchmark(tiny_bundle, config, progress=False)
    assert [(a["clients"], a["steal_pct"]) for a in result["set_aside"]] == [(1, 60.0)]
    assert [row["steal_pct"] for row in result["rows"]] == [3.0, 3.5, 2.5, 2.5]  # the kept rounds' means
    assert [row["rounds"] for row in result["rows"]] == [2, 2, 2, 2]
    assert "set aside and run again" in bench.markdown(result) and "fewer rounds" not in bench.markdown(result)
    assert [row["clients"] for row in result["floor"]["rows"]] == [1, 8]
    steals = iter([5.0, 3.0, 1.0, 4.0] + [50.0, 1.0] * 3 + [2.0, 2.0])  # 8 clients: only the last try is kept
    result = bench.run_serve_benchmark(tiny_bundle, config, progress=False)
    assert [row["rounds"] for row in result["rows"]] == [2, 2, 1, 1] and len(result["set_aside"]) == 3
    assert "Rows from fewer rounds than 2 (the others were set aside): in-process/8 (1), v2-binary/8 (1)" in (
        bench.markdown(result)
    )
    with pytest.raises(ValueError, match="max_steal_pct"):
        bench.ServeBenchConfig(max_steal_pct=100.0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-steal-pct", "100", "expected a percentage in [0, 100), got '100'"),
        ("--max-steal-pct", "-1", "expected a percentage in [0, 100)"),
        ("--seconds", "0", "expected seconds > 0, got '0'"),
        ("--warmup-seconds", "nan", "expected seconds >= 0, got 'nan'"),
        ("--max-delay-ms", "fast", "expected milliseconds >= 0, got 'fast'"),
    ],
)
def test_bench_serve_options_name_what_they_expect(option, value, message, tiny_bundle, capsys):
    from pdsn.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["bench-serve", "--bundle", str(tiny_bundle), option, value])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
