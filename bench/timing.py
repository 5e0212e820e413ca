"""Timing one callable: warm-up, then a measurement window, reported as latency percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

# Measurement windows whose thirds differ by more than this (in %) are flagged as noisy.
NOISY_WINDOW_PCT = 10.0


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    iterations: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # Spread of the medians of the window's three consecutive thirds, in % of their mean: how much
    # the result would move between runs (NaN with fewer than 6 calls).
    window_spread_pct: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.p50_ms / 1000.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput_img_s": self.throughput}


def measure(
    run: Callable[[], object],
    batch: int,
    warmup: int = 2,
    min_iterations: int = 5,
    min_seconds: float = 1.0,
    max_iterations: int = 1000,
) -> LatencyStats:
    """Call ``run`` ``warmup`` times unmeasured, then until both minimums are reached."""
    return measure_interleaved([run], batch, warmup, min_iterations, min_seconds, max_iterations)[0]


def measure_interleaved(
    runs: list[Callable[[], object]],
    batch: int,
    warmup: int = 2,
    min_iterations: int = 5,
    min_seconds: float = 1.0,
    max_iterations: int = 1000,
) -> list[LatencyStats]:
    """Time several calls in alternation (a, b, a, b, ...) so that drift in the machine's speed
    falls on all of them alike; their differences are then meaningful even on a noisy machine."""
    if batch < 1 or min_iterations < 1 or not runs:
        raise ValueError(f"batch and min_iterations must be >= 1 and runs non-empty, got {batch}, {min_iterations}")
    for _ in range(warmup):
        for run in runs:
            run()
    samples: list[list[float]] = [[] for _ in runs]
    start = time.perf_counter()
    while len(samples[0]) < max_iterations and (
        len(samples[0]) < min_iterations or time.perf_counter() - start < min_seconds
    ):
        for run, times in zip(runs, samples):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1000.0)
    return [_stats(np.asarray(times), batch) for times in samples]


def _stats(ms: np.ndarray, batch: int) -> LatencyStats:
    return LatencyStats(
        batch=batch,
        iterations=len(ms),
        min_ms=float(ms.min()),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        max_ms=float(ms.max()),
        mean_ms=float(ms.mean()),
        window_spread_pct=window_spread([float(np.median(part)) for part in np.array_split(ms, 3)])
        if len(ms) >= 6
        else float("nan"),
    )


def window_spread(values: list[float]) -> float:
    """(max − min) / mean of per-window figures, in %: the run-to-run variation a window shows."""
    mean = float(np.mean(values))
    return 100.0 * (max(values) - min(values)) / mean if mean > 0 else float("nan")
