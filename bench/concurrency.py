"""Closed-loop clients through the dynamic batcher: throughput against latency per ``max_delay_ms``.

Each client is a thread that submits one face, waits for its embedding, and submits the next at
once (closed loop), like a camera stream or request handler that calls the runtime synchronously.
After a warm-up, the requests answered inside the measuring window count (requiring them to
have been submitted inside it too would drop up to one whole batch at each edge of the window).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from pdsn.bench.machine import cpu_counters, steal_percent
from pdsn.bench.timing import NOISY_WINDOW_PCT, window_spread


@dataclass(frozen=True)
class SweepConfig:
    clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    delays_ms: tuple[float, ...] = (0.0, 2.0, 10.0)
    max_batch: int = 8
    seconds: float = 5.0
    warmup_seconds: float = 1.0


def sweep(
    bundle,
    backend: str,
    precision: str,
    config: SweepConfig,
    faces: np.ndarray,
    occlusion: np.ndarray,
    progress: bool = True,
) -> list[dict]:
    """One row per (max_delay_ms, clients): throughput, client latency, and where the time went."""
    from pdsn.runtime import Recognizer

    rows = []
    for delay in config.delays_ms:
        with Recognizer.open(
            bundle,
            backend=backend,
            precision=precision,
            max_batch=config.max_batch,
            max_delay_ms=delay,
            queue_size=max(4 * config.max_batch, max(config.clients)),
            allow_ungated=True,
        ) as recognizer:
            for clients in config.clients:
                row = {
                    "path": f"{backend}-{precision}",
                    "max_delay_ms": delay,
                    "max_batch": config.max_batch,
                    **closed_loop(recognizer, clients, config, faces, occlusion),
                }
                rows.append(row)
                if progress:
                    print(
                        f"  {row['path']:<22} delay {delay:>4g} ms, {clients:>2} clients: "
                        f"{row['throughput_img_s']:8.1f} img/s, p99 {row['p99_ms']:8.1f} ms, "
                        f"mean batch {row['mean_batch']:.1f}",
                        flush=True,
                    )
    return rows


def closed_loop(recognizer, clients: int, config: SweepConfig, faces: np.ndarray, occlusion: np.ndarray) -> dict:
    """Run ``clients`` closed-loop threads for a warm-up and then the window; figures of the window."""
    seconds = config.seconds
    window: dict[str, float] = {}
    stop = threading.Event()
    records: list[list[tuple[float, float, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        k = index
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                future = recognizer.submit(faces[k % len(faces)], occlusion[k % len(occlusion)])
                t1 = time.perf_counter()
                future.result()
                records[index].append((t0, t1, time.perf_counter()))
                k += clients
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(config.warmup_seconds)
    recognizer.stats(reset=True)
    counters = cpu_counters()
    window["start"] = time.perf_counter()
    time.sleep(seconds)
    window["end"] = time.perf_counter()
    steal = steal_percent(counters, cpu_counters())
    stats = recognizer.stats(reset=True)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a benchmark client failed: {errors[0]}") from errors[0]
    inside = [r for rs in records for r in rs if window["start"] <= r[2] <= window["end"]]
    if not inside:
        raise RuntimeError(
            f"no request completed inside the {seconds} s window with {clients} clients; "
            f"use a longer window (--sweep-seconds)"
        )
    latency = np.array([(done - t0) * 1000 for t0, _, done in inside])
    submit = np.array([(t1 - t0) * 1000 for t0, t1, _ in inside])
    duration = window["end"] - window["start"]
    thirds, _ = np.histogram([done for _, _, done in inside], np.linspace(window["start"], window["end"], 4))
    split = {
        "submit": float(submit.mean()),
        "queue": stats.queue_wait_ms.get("mean", float("nan")),
        "compute": stats.compute_ms.get("mean", float("nan")),
    }
    split["handoff"] = float(latency.mean()) - sum(split.values())
    spread = window_spread(thirds.tolist()) if len(inside) >= 6 else float("nan")
    return {
        "clients": clients,
        "requests": len(inside),
        "throughput_img_s": len(inside) / duration,
        "min_ms": float(latency.min()),
        "p50_ms": float(np.percentile(latency, 50)),
        "p90_ms": float(np.percentile(latency, 90)),
        "p99_ms": float(np.percentile(latency, 99)),
        "max_ms": float(latency.max()),
        "mean_ms": float(latency.mean()),
        "split_ms": split,
        "overhead_ms": float(latency.mean()) - split["compute"],
        "mean_batch": stats.mean_batch,
        "batch_sizes": stats.batch_sizes,
        "rejected": stats.rejected,
        "window_spread_pct": spread,
        "noisy": spread > NOISY_WINDOW_PCT,
        "steal_pct": steal,
    }
