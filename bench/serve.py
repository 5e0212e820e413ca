"""``pdsn bench-serve``: closed-loop HTTP clients against a live ``pdsn serve``, beside the in-process batcher.

Both sides use the same bundle, backend, precision and batcher settings, the same faces and
occlusion, and the same closed loop: each client sends one face, waits for its embedding and
sends the next. In process, clients are threads calling ``Recognizer.submit``
(``pdsn.bench.concurrency.closed_loop``); over HTTP they are keep-alive connections on one event
loop (``pdsn.bench.http_load``; their CPU per request is in every row), against a server process
started here on 127.0.0.1. Each concurrency is
measured on every path in turn (never two at once), over several rounds whose medians are the rows,
so machine drift falls on all alike; each window records the host's CPU steal. The
HTTP overhead per request is the HTTP mean latency minus the in-process mean latency at the same
concurrency. Requests are built before the window, so the clients' own work is small; the
clients still share the CPU with the server, as any co-located client does.

Each HTTP window also reads the server's CPU time from /proc: per request, the whole process and its
event loop (the main thread, where uvicorn and the app run; the model's and the decoding pool's
threads are the rest), and the clients' own (this process's) CPU per request. Beside each concurrency, the same clients drive uvicorn serving an app that
answers at once (``pdsn.bench.http_floor``): what the HTTP server alone takes per request.

Routes: ``v2-binary`` (KServe v2 with binary tensors: the raw uint8 crop), ``v2-json`` (the same
in JSON) and ``v1-embed`` (the face API: a base64 PNG, decoded by the server).
"""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdsn.bench.concurrency import SweepConfig, closed_loop
from pdsn.bench.machine import STOLEN_WINDOW_PCT, cpu_counters, cpu_seconds, describe_machine, steal_percent
from pdsn.bench.report import save_report
from pdsn.bench.timing import NOISY_WINDOW_PCT, measure, window_spread
from pdsn.triton_repo.local_server import free_port, wait_until_ready

SERVE_COMMAND = [sys.executable, "-m", "pdsn", "serve"]
FLOOR_COMMAND = [
    sys.executable,
    "-m",
    "uvicorn",
    "pdsn.bench.http_floor:app",
    "--no-access-log",
    "--log-level",
    "warning",
]
ROUTES = ("v2-binary", "v2-json", "v1-embed")
# Goals on a 2-core CPU with the demo model.
GOAL_OVERHEAD_MS = 2.0
GOAL_CLIENTS = 8
GOAL_THROUGHPUT_RATIO = 0.85
READY_TIMEOUT_S = 120.0
FACES = 64


@dataclass(frozen=True)
class ServeBenchConfig:
    backend: str = "auto"
    precision: str = "auto"
    clients: tuple[int, ...] = (1, 8, 32)
    routes: tuple[str, ...] = ("v2-binary", "v1-embed")
    max_batch: int = 8
    max_delay_ms: float = 2.0
    queue_size: int | None = None  # default: room for every client
    seconds: float = 5.0
    warmup_seconds: float = 1.0
    rounds: int = 3  # each path runs this many windows, interleaved with the others; rows are their medians
    # A round in which any window saw more host steal than this is run again (at most ``rounds`` extra
    # rounds per concurrency) and kept apart; if every try was stolen, the least stolen stand (flagged in
    # the report). None keeps every round.
    max_steal_pct: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.routes) - set(ROUTES))
        if unknown:
            raise ValueError(f"routes {unknown} are not among {ROUTES}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be a whole number >= 1, got {self.rounds!r}")
        if self.max_steal_pct is not None and not 0.0 <= self.max_steal_pct < 100.0:
            raise ValueError(f"max_steal_pct must be a percentage in [0, 100), got {self.max_steal_pct!r}")


def run_serve_benchmark(bundle: Path, config: ServeBenchConfig, progress: bool = True) -> dict:
    """In-process rows, then HTTP rows per route, each per concurrency; goals where both sides ran."""
    from pdsn.model.sample_faces import occlusion_mix, seeded_faces
    from pdsn.runtime import Recognizer

    queue = config.queue_size or max(4 * config.max_batch, max(config.clients))
    loop = SweepConfig(seconds=config.seconds, warmup_seconds=config.warmup_seconds)
    recognizer = Recognizer.open(
        bundle,
        backend=config.backend,
        precision=config.precision,
        max_batch=config.max_batch,
        max_delay_ms=config.max_delay_ms,
        queue_size=queue,
        allow_ungated=True,
    )
    with recognizer:
        crop = (recognizer.contract.height, recognizer.contract.width)
        faces, occlusion = seeded_faces(FACES, seed=4242, size=crop), occlusion_mix(FACES, seed=4242)
        backend, precision = recognizer.backend_info["backend"], recognizer.precision
        options = [
            "--backend", backend, "--precision", precision, "--max-batch", str(config.max_batch),
            "--max-delay-ms", str(config.max_delay_ms), "--queue-size", str(queue), "--deadline-ms", "0",
        ]  # fmt: skip
        requests = {route: [_request(route, faces[i], occlusion[i]) for i in range(FACES)] for route in config.routes}
        rows, set_aside, floor = [], [], []
        serve = _Server([*SERVE_COMMAND, "--bundle", str(bundle), *options], "pdsn serve")
        with serve as server, _Server(FLOOR_COMMAND, "uvicorn (floor)") as floor_server:
            # Each concurrency in turn, every path in turn within a round: machine drift (and the host's
            # steal) falls on all paths alike, and the median round of each path is its row.
            for clients in config.clients:
                kept: list[dict[str, dict]] = []
                for _ in range(2 * config.rounds if config.max_steal_pct is not None else config.rounds):
                    if len(kept) == config.rounds:
                        break
                    one = {"in-process": closed_loop(recognizer, clients, loop, faces, occlusion)}
                    for route in config.routes:
                        one[route] = _http_loop(server, requests[route], clients, config)
                    stolen = max(window["steal_pct"] for window in one.values())
                    if config.max_steal_pct is not None and stolen > config.max_steal_pct:
                        set_aside.append({"clients": clients, "steal_pct": stolen, "windows": one})
                        _say_set_aside(progress, clients, stolen, config.max_steal_pct)
                    else:
                        kept.append(one)
                if not kept:  # every try was stolen: the least stolen stand, and the report flags their steal
                    mine = sorted((a for a in set_aside if a["clients"] == clients), key=lambda a: a["steal_pct"])
                    for least in mine[: config.rounds]:
                        set_aside.remove(least)
                        kept.append(least["windows"])
                for path in ("in-process", *config.routes):
                    rows.append({"path": path, **_median([one[path] for one in kept])})
                    _say(progress, rows[-1])
                floor.append(_http_loop(floor_server, requests[config.routes[0]], clients, config, batches=False))
    _compare(rows, _decode_ms(faces) if "v1-embed" in config.routes else None)
    return {
        "bundle": str(bundle),
        "backend": backend,
        "precision": precision,
        "machine": describe_machine(("pdsn-deploy", "numpy", "onnxruntime", "openvino", "fastapi", "uvicorn")),
        "config": asdict(config),
        "rows": rows,
        "set_aside": set_aside,
        "floor": {"route": config.routes[0], "rows": floor},
        "goals": _goals(rows),
    }


def write_serve_results(result: dict, out_dir: Path, stem: str) -> list[Path]:
    return save_report(result, markdown(result), out_dir, stem)


def markdown(result: dict) -> str:
    config = result["config"]
    lines = [
        f"# pdsn serve: HTTP vs the in-process batcher ({result['backend']} {result['precision']})",
        "",
        f"Bundle `{result['bundle']}`; {result['machine']['cpu']}, {result['machine']['cores']} cores. "
        f"max_batch {config['max_batch']}, max_delay_ms {config['max_delay_ms']:g}, window {config['seconds']:g} s "
        f"after {config['warmup_seconds']:g} s of warm-up, {config['rounds']} rounds with the paths interleaved; each "
        f"figure is the median over the rounds (host steal: their mean). One face per request, closed loop.",
        "",
        "| path | clients | img/s | p50 ms | p99 ms | mean ms | mean batch | vs in-process | added ms/request "
        "| server CPU ms/request (event loop) | clients' CPU ms/request | host steal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ratio = f"{100 * row['vs_in_process']:.0f}%" if "vs_in_process" in row else "-"
        added = f"{row['added_ms']:+.2f}" if "added_ms" in row else "-"
        batch = f"{row['mean_batch']:.1f}"
        lines.append(
            f"| {row['path']} | {row['clients']} | {row['throughput_img_s']:.1f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['mean_ms']:.2f} | {batch} | {ratio} | {added} | {_server_cpu(row)} | "
            f"{_clients_cpu(row)} | {row['steal_pct']:.0f}% |"
        )
    floor = result.get("floor")
    if floor and floor["rows"]:
        lines += [
            "",
            f"uvicorn alone (`pdsn.bench.http_floor`: the same clients and {floor['route']} requests, answered at once "
            f"without the app), for what the HTTP server itself takes:",
            "",
            "| clients | requests/s | p50 ms | server CPU ms/request (event loop) | clients' CPU ms/request | host steal |",
            "|---|---|---|---|---|---|",
        ]
        for row in floor["rows"]:
            lines.append(
                f"| {row['clients']} | {row['throughput_img_s']:.0f} | {row['p50_ms']:.2f} | {_server_cpu(row)} | "
                f"{_clients_cpu(row)} | {row['steal_pct']:.0f}% |"
            )
    decode = next((row["decode_ms"] for row in result["rows"] if "decode_ms" in row), None)
    if decode is not None:
        lines += [
            "",
            f"v1-embed sends each face as a PNG file, which its server decodes ({decode:.2f} ms per file, measured "
            f"here on one thread); the in-process batcher is handed decoded arrays. Its overhead goal is judged "
            f"beyond that decoding.",
        ]
    lines += ["", "Goals:", ""]
    for goal in result["goals"]:
        lines.append(
            f"- {goal['goal']} ({goal['path']}): {goal['value']} against {goal['bound']}: {'met' if goal['met'] else 'MISSED'}"
        )
    fewer = [f"{r['path']}/{r['clients']} ({r['rounds']})" for r in result["rows"] if r["rounds"] < config["rounds"]]
    if fewer:
        lines += [
            "",
            f"Rows from fewer rounds than {config['rounds']} (the others were set aside): {', '.join(fewer)}.",
        ]
    aside = result.get("set_aside", [])
    if aside:
        stolen = ", ".join(f"{a['clients']} clients ({a['steal_pct']:.0f}%)" for a in aside)
        lines += [
            "",
            f"Rounds set aside and run again because a window saw over {config['max_steal_pct']:g}% host steal: "
            f"{stolen}. Their windows are in the JSON under `set_aside`.",
        ]
    noisy = [f"{r['path']}/{r['clients']}" for r in result["rows"] if r.get("noisy")]
    if noisy:
        lines += ["", f"Noisy windows (thirds differ by > {NOISY_WINDOW_PCT:g}%): {', '.join(noisy)}."]
    stolen = [f"{r['path']}/{r['clients']}" for r in result["rows"] if r["steal_pct"] > STOLEN_WINDOW_PCT]
    if stolen:
        lines += [
            "",
            f"Host steal: in {', '.join(stolen)} the hypervisor ran other guests for over {STOLEN_WINDOW_PCT:g}% of "
            f"this machine's CPU time; those rows measure the host more than the server.",
        ]
    return "\n".join(lines) + "\n"


def _request(route: str, face: np.ndarray, occlusion: np.ndarray) -> tuple[str, bytes, dict]:
    """(path, body, headers) of one single-face request on ``route``."""
    cells = [int(c) for c in np.flatnonzero(occlusion)]
    if route == "v1-embed":
        body = {"images": [base64.b64encode(_png(face)).decode()], "occlusion": cells}
        return "/v1/embed", json.dumps(body).encode(), {"Content-Type": "application/json"}
    image = {"name": "image", "datatype": "UINT8", "shape": [1, *face.shape]}
    mask = {"name": "occlusion", "datatype": "FP32", "shape": [1, len(occlusion)]}
    vector = occlusion.astype(np.float32)
    if route == "v2-json":
        inputs = [{**image, "data": face.ravel().tolist()}, {**mask, "data": vector.tolist()}]
        return "/v2/models/pdsn/infer", json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"}
    inputs = [
        {**image, "parameters": {"binary_data_size": face.nbytes}},
        {**mask, "parameters": {"binary_data_size": vector.nbytes}},
    ]
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}]})
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return "/v2/models/pdsn/infer", header.encode() + face.tobytes() + vector.tobytes(), headers


def _png(face: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, "PNG")
    return buffer.getvalue()


def _decode_ms(faces: np.ndarray) -> float:
    """Mean time to decode one of the face API's PNG files, as its server does: work an in-process caller
    holding decoded arrays does not do, so it is reported apart from the HTTP overhead."""
    from pdsn.runtime import decode_image

    files = itertools.cycle([_png(face) for face in faces])
    return measure(lambda: decode_image(next(files)), batch=1, warmup=8, min_iterations=len(faces)).mean_ms


def _http_loop(server: _Server, requests: list, clients: int, config: ServeBenchConfig, batches: bool = True) -> dict:
    """Like ``closed_loop``, over HTTP: ``clients`` keep-alive connections (``pdsn.bench.http_load``), and the
    server's CPU per request: the whole process, and its event loop (the main thread) alone."""
    from pdsn.bench.http_load import run_closed_loop

    port, pid = server.port, server.process.pid
    measured: dict = {}

    def window() -> None:
        time.sleep(config.warmup_seconds)
        measured["batches_before"] = _server_batches(port) if batches else (0.0, 0.0)
        counters, cpu = cpu_counters(), (cpu_seconds(pid), cpu_seconds(pid, pid))
        measured["start"], clients_cpu = time.perf_counter(), time.process_time()
        time.sleep(config.seconds)
        measured["end"], measured["clients_cpu"] = time.perf_counter(), time.process_time() - clients_cpu
        measured["cpu"] = [
            _spent(before, after) for before, after in zip(cpu, (cpu_seconds(pid), cpu_seconds(pid, pid)))
        ]
        measured["steal"] = steal_percent(counters, cpu_counters())
        measured["batches_after"] = _server_batches(port) if batches else (0.0, 0.0)

    try:
        records = run_closed_loop(port, requests, clients, window)
    except RuntimeError as exc:
        raise RuntimeError(f"an HTTP benchmark client failed: {exc}") from exc
    start, end = measured["start"], measured["end"]
    done = [(t0, t1) for t0, t1 in records if start <= t1 <= end]
    if not done:
        raise RuntimeError(f"no request completed inside the {config.seconds} s window; use a longer --seconds")
    latency = np.array([(t1 - t0) * 1000 for t0, t1 in done])
    thirds, _ = np.histogram([t1 for _, t1 in done], np.linspace(start, end, 4))
    spread = window_spread(thirds.tolist()) if len(done) >= 6 else float("nan")
    faces, batches = (after - before for after, before in zip(measured["batches_after"], measured["batches_before"]))
    return {
        "clients": clients,
        "requests": len(done),
        "throughput_img_s": len(done) / (end - start),
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        "mean_ms": float(latency.mean()),
        "mean_batch": faces / batches if batches else float("nan"),
        "window_spread_pct": spread,
        "noisy": spread > NOISY_WINDOW_PCT,
        "steal_pct": measured["steal"],
        "server_cpu_ms": 1000.0 * measured["cpu"][0] / len(done),
        "loop_cpu_ms": 1000.0 * measured["cpu"][1] / len(done),
        "clients_cpu_ms": 1000.0 * measured["clients_cpu"] / len(done),
    }


def _spent(before: float | None, after: float | None) -> float:
    return float("nan") if before is None or after is None else after - before


def _server_batches(port: int) -> tuple[float, float]:
    """(faces, batches) the server's batcher has run so far, from its Prometheus batch-size histogram."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    labels = '{batcher="embedding"}'
    faces, batches = (f"pdsn_batcher_batch_size_{part}{labels}" for part in ("sum", "count"))
    return float(values.get(faces, 0.0)), float(values.get(batches, 0.0))


def _median(windows: list[dict]) -> dict:
    """One row from a path's rounds: each figure the median over the rounds (steal their mean), rounds kept."""
    row = {"clients": windows[0]["clients"], "requests": sum(w["requests"] for w in windows), "rounds": len(windows)}
    figures = ("throughput_img_s", "p50_ms", "p99_ms", "mean_ms", "mean_batch", "window_spread_pct")
    for key in (*figures, "server_cpu_ms", "loop_cpu_ms", "clients_cpu_ms"):
        if key in windows[0]:
            row[key] = float(np.median([w[key] for w in windows]))
    row["noisy"] = row["window_spread_pct"] > NOISY_WINDOW_PCT
    row["steal_pct"] = float(np.mean([w["steal_pct"] for w in windows]))
    row["rounds_img_s"] = [w["throughput_img_s"] for w in windows]
    return row


def _compare(rows: list[dict], decode_ms: float | None) -> None:
    base = {r["clients"]: r for r in rows if r["path"] == "in-process"}
    for row in rows:
        if row["path"] != "in-process" and row["clients"] in base:
            row["vs_in_process"] = row["throughput_img_s"] / base[row["clients"]]["throughput_img_s"]
            row["added_ms"] = row["mean_ms"] - base[row["clients"]]["mean_ms"]
            if row["path"] == "v1-embed":
                row["decode_ms"] = decode_ms
                row["added_beyond_decode_ms"] = row["added_ms"] - decode_ms


def _goals(rows: list[dict]) -> list[dict]:
    goals = []
    for row in rows:
        if "added_ms" in row and row["clients"] == 1:
            decodes = "added_beyond_decode_ms" in row
            added = row["added_beyond_decode_ms" if decodes else "added_ms"]
            goals.append(
                {
                    "goal": f"HTTP overhead per request at 1 client{' beyond decoding the PNG' if decodes else ''}",
                    "path": row["path"],
                    "value": f"{added:.2f} ms",
                    "bound": f"<= {GOAL_OVERHEAD_MS:g} ms",
                    "met": added <= GOAL_OVERHEAD_MS,
                }
            )
        if "vs_in_process" in row and row["clients"] == GOAL_CLIENTS:
            goals.append(
                {
                    "goal": f"throughput at {GOAL_CLIENTS} clients vs the in-process batcher",
                    "path": row["path"],
                    "value": f"{100 * row['vs_in_process']:.0f}%",
                    "bound": f">= {100 * GOAL_THROUGHPUT_RATIO:.0f}%",
                    "met": row["vs_in_process"] >= GOAL_THROUGHPUT_RATIO,
                }
            )
    return goals


def _server_cpu(row: dict) -> str:
    if "server_cpu_ms" not in row:
        return "-"
    return f"{row['server_cpu_ms']:.2f} ({row['loop_cpu_ms']:.2f})"


def _clients_cpu(row: dict) -> str:
    return f"{row['clients_cpu_ms']:.2f}" if "clients_cpu_ms" in row else "-"


def _say_set_aside(enabled: bool, clients: int, stolen: float, limit: float) -> None:
    if enabled:
        print(
            f"  round at {clients} clients set aside: host steal {stolen:.0f}% > {limit:g}%; running another",
            flush=True,
        )


def _say(enabled: bool, row: dict) -> None:
    if enabled:
        print(
            f"  {row['path']:<11} {row['clients']:>2} clients: {row['throughput_img_s']:8.1f} img/s, "
            f"p50 {row['p50_ms']:7.2f} ms, p99 {row['p99_ms']:7.2f} ms",
            flush=True,
        )


class _Server:
    """A server on a free 127.0.0.1 port for the benchmark's duration; its stderr kept for errors."""

    def __init__(self, command: list[str], name: str) -> None:
        self.port = free_port()
        self.command = [*command, "--port", str(self.port)]
        self.name = name

    def __enter__(self) -> _Server:
        self.errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.errors)
        try:
            wait_until_ready(self.process, f"http://127.0.0.1:{self.port}", self.name, self._logs, READY_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _logs(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.errors.close()
