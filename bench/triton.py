"""In-process runtime against the same model behind a local Triton server (python kind), gRPC and HTTP.

``pdsn bench-triton [--bundle B]``: without ``--bundle`` the shipped demo model is
exported (FP32) into the work folder. A repository of ``pdsn triton-repo --kind python`` is
served by the nvidia-pytriton wheel's ``tritonserver`` from the environment of
``scripts/triton-env.sh`` (made once). Three paths embed the same faces with closed-loop clients
(``pdsn.bench.concurrency.closed_loop``), 1 client (batch 1) and 8 concurrent clients:

- ``in-process``: ``Recognizer`` on ONNX Runtime CPU in this process;
- ``triton-grpc`` / ``triton-http``: ``Recognizer(backend="triton")`` to the server, whose python
  model runs the same ``Recognizer`` on ONNX Runtime CPU.

Both ONNX Runtimes use their default intra-op threads (one per core); the client's batcher and
Triton's dynamic batcher both wait up to 2 ms (max batch 8). Ratios are against in-process from the
same run. The report goes to ``bench/results/<name>.md`` (and ``.json``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pdsn.bench.concurrency import SweepConfig, closed_loop
from pdsn.bench.machine import describe_machine

PATHS = ("in-process", "triton-grpc", "triton-http")
CLIENTS = (1, 8)
MAX_BATCH = 8
DELAY_MS = 2.0


def run(bundle: Path | None, work: Path, env_dir: Path, precision: str = "fp32", seconds: float = 8.0) -> dict:
    """Every path at 1 and 8 clients, ``seconds`` per row; ``bundle`` None: the demo model exported into ``work``."""
    from pdsn.model.sample_faces import seeded_faces
    from pdsn.runtime import Recognizer
    from pdsn.runtime.bundle import open_bundle
    from pdsn.triton_repo.local_server import LocalTritonServer, triton_env
    from pdsn.triton_repo.repository import RepositoryRequest, write_repository

    config = SweepConfig(max_batch=MAX_BATCH, seconds=seconds, warmup_seconds=1.0)
    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = _demo_bundle(work / "demo-bundle")
    started = time.perf_counter()
    env = triton_env(env_dir)
    env_seconds = time.perf_counter() - started
    repo = work / f"repo-{time.strftime('%Y%m%d-%H%M%S')}"
    write_repository(
        RepositoryRequest(
            bundle,
            repo,
            precision=precision,
            kind="python",
            max_batch=MAX_BATCH,
            max_queue_delay_us=int(DELAY_MS * 1000),
        )
    )
    contract = open_bundle(bundle).contract
    faces = seeded_faces(64, seed=1, size=(contract.height, contract.width))
    occlusion = np.zeros((64, 25), np.float32)
    occlusion[::2, 10:14] = 1  # every other face wears sunglasses
    rows = []
    with LocalTritonServer(repo, work / "tritonserver.log", env) as server:
        options = {
            "in-process": {"backend": "onnxruntime"},
            "triton-grpc": {"backend": "triton", "url": server.grpc_url, "protocol": "grpc"},
            "triton-http": {"backend": "triton", "url": server.http_url, "protocol": "http"},
        }
        for path in PATHS:
            with Recognizer.open(
                bundle, precision=precision, max_batch=MAX_BATCH, max_delay_ms=DELAY_MS, **options[path]
            ) as recognizer:
                recognizer.embed(faces[:MAX_BATCH], occlusion=occlusion[:MAX_BATCH])  # warm both ends
                for clients in CLIENTS:
                    row = {"path": path, **closed_loop(recognizer, clients, config, faces, occlusion)}
                    rows.append(row)
                    print(
                        f"  {path:<12} {clients} client(s): {row['throughput_img_s']:8.1f} img/s, "
                        f"p50 {row['p50_ms']:6.2f} ms, p99 {row['p99_ms']:6.2f} ms, mean batch {row['mean_batch']:.1f}",
                        flush=True,
                    )
    base = {r["clients"]: r for r in rows if r["path"] == "in-process"}
    for row in rows:
        row["throughput_ratio"] = row["throughput_img_s"] / base[row["clients"]]["throughput_img_s"]
        row["p50_ratio"] = row["p50_ms"] / base[row["clients"]]["p50_ms"]
    return {
        "machine": describe_machine(("pdsn-deploy", "numpy", "onnxruntime", "tritonclient", "grpcio")),
        "bundle": str(bundle),
        "precision": precision,
        "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), python backend, 1 CPU instance",
        "settings": {"max_batch": MAX_BATCH, "delay_ms": DELAY_MS, "seconds": config.seconds},
        "env_seconds": round(env_seconds, 1),
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        "| path | clients | img/s | × in-process | p50 ms | p99 ms | p50 × in-process | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['path']} | {r['clients']} | {r['throughput_img_s']:.1f} | {r['throughput_ratio']:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ratio']:.2f} | {r['mean_batch']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    machine = result["machine"]
    settings = result["settings"]
    return (
        f"# Triton against the in-process runtime ({result['precision']})\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, Python {machine['python']}, "
        f"{', '.join(f'{k} {v}' for k, v in machine['packages'].items())}.\n\n"
        f"Bundle: `{result['bundle']}`. Server: {result['server']}, on the same machine (loopback). Closed-loop "
        f"clients, {settings['seconds']} s per row after a warm-up; max batch {settings['max_batch']}, batching "
        f"delay {settings['delay_ms']} ms on the client's batcher and in Triton's dynamic batcher. Ratios are "
        f"against in-process in the same run. Both ONNX Runtimes use their default threads on the same cores, "
        f"so the server and the client share the CPU.\n\n" + table(result)
    )


def _demo_bundle(out: Path) -> Path:
    """The shipped demo model exported (FP32 only) once into ``out``."""
    if (out / "manifest.json").is_file():
        return out
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    export_bundle(ExportRequest(out=out, weights="demo"))
    return out
