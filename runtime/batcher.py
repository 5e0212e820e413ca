"""Dynamic batching: requests from any number of threads run together as batches on one worker.

A request is one or more prepared faces that stay together. The worker takes the oldest request,
then keeps adding whole requests (first in, first out) until one of these holds:

- the batch has ``max_batch`` faces, or the next request would not fit;
- ``max_delay_ms`` has passed since the oldest request in the batch arrived, or since the last
  batch finished if that was later (so the callers it answered can rejoin);
- the batch size is one the backend prefers (e.g. a CUDA-graph bucket) and nothing else is queued.

Faces, not requests, count towards ``max_batch`` and the queue's bound. A full queue rejects at
once (``QueueFullError``); a request still queued when its deadline passes fails with
``DeadlineExceededError`` and is never run; a request whose future was cancelled is skipped.
``close()`` runs everything already accepted, then stops; every accepted request is answered
exactly once. An exception from the backend fails that batch's futures and the worker goes on.

With ``pipelined``, ``run_batch`` only starts a batch (e.g. queues its copies and engine run on
GPU streams) and returns a call that waits for its embeddings. The worker then keeps two batches
in flight: while one computes, a batch the queue already makes (by the rules above, without
waiting for the delay) is started, so its input copies overlap the first one's compute. When
the queue makes none, the worker answers the batch in flight first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Queue waits and compute times kept for percentiles: the most recent this many requests.
TIMING_WINDOW = 100_000


class QueueFullError(RuntimeError):
    """The batcher's queue is full: the caller should back off, shed load or retry later."""


class DeadlineExceededError(TimeoutError):
    """A request waited in the queue past its deadline and was not run."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed and accepts no new work."""


@dataclass(eq=False)
class _Request:
    images: np.ndarray
    occlusion: np.ndarray
    future: Future
    enqueued: float
    expires: float | None
    single: bool

    @property
    def size(self) -> int:
        return len(self.images)


@dataclass
class BatcherStats:
    """Counters since the batcher started. Times are in milliseconds, per request."""

    requests: int = 0
    faces: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    queue_wait_ms: dict[str, float] = field(default_factory=dict)
    compute_ms: dict[str, float] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        total = sum(self.batch_sizes.values())
        return sum(size * count for size, count in self.batch_sizes.items()) / total if total else 0.0


class DynamicBatcher:
    """Collects requests into batches for ``run_batch(images, occlusion) -> embeddings``, or with
    ``pipelined`` for ``run_batch(images, occlusion) -> (call that waits and returns embeddings)``."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray, np.ndarray], Any],
        max_batch: int,
        max_delay_ms: float = 2.0,
        queue_size: int | None = None,
        preferred_batches: Sequence[int] = (),
        name: str = "pdsn-batcher",
        pipelined: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        queue_size = 4 * max_batch if queue_size is None else queue_size
        if queue_size < max_batch:
            raise ValueError(
                f"queue_size ({queue_size} faces) must hold at least one full batch (max_batch {max_batch})"
            )
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self.preferred_batches = frozenset(b for b in preferred_batches if 1 <= b <= max_batch)
        self._run_batch = run_batch
        self._in_flight_limit = 2 if pipelined else 1
        self._pending: deque[_Request] = deque()
        self._queued_faces = 0
        self._closing = False
        self._last_done = 0.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._queue_wait: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._compute: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._worker = threading.Thread(target=self._serve, name=name, daemon=True)
        self._worker.start()

    def submit(
        self, images: np.ndarray, occlusion: np.ndarray, deadline: float | None = None, single: bool = False
    ) -> Future:
        """Queue prepared ``images`` (one request; they run in one batch) and return their future.

        ``deadline``: seconds this request may wait in the queue before it fails unrun. The future's
        result is the request's embeddings, or with ``single`` the one embedding of a one-face request.
        """
        size = len(images)
        if not 1 <= size <= self.max_batch:
            raise ValueError(f"a request holds 1..max_batch ({self.max_batch}) faces, got {size}; split it")
        if len(occlusion) != size:
            raise ValueError(f"occlusion has {len(occlusion)} rows for {size} images")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
        now = time.perf_counter()
        if single and size != 1:
            raise ValueError(f"single=True needs a one-face request, got {size} faces")
        request = _Request(images, occlusion, Future(), now, None if deadline is None else now + deadline, single)
        with self._lock:
            if self._closing:
                raise BatcherClosedError("the batcher was closed; open a new Recognizer to submit more work")
            if self._queued_faces + size > self.queue_size:
                self._counts["rejected"] += 1
                raise QueueFullError(
                    f"the queue holds {self._queued_faces} of {self.queue_size} faces and cannot take "
                    f"{size} more; back off and retry, or open the Recognizer with a larger queue_size"
                )
            self._pending.append(request)
            self._queued_faces += size
            self._counts["requests"] += 1
            self._counts["faces"] += size
            self._arrived.notify()
        return request.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, run everything already accepted, and stop the worker."""
        with self._lock:
            self._closing = True
            self._arrived.notify()
        self._worker.join(timeout)
        if self._worker.is_alive():
            raise TimeoutError(f"the batcher did not drain within {timeout} s; accepted work is still running")

    @property
    def closed(self) -> bool:
        return self._closing

    def stats(self, reset: bool = False) -> BatcherStats:
        """The counters so far; with ``reset`` they start again from zero (e.g. per reporting interval)."""
        with self._lock:
            counts = dict(self._counts)
            sizes = dict(sorted(self._batch_sizes.items()))
            waits, computes = np.asarray(self._queue_wait), np.asarray(self._compute)
            if reset:
                for collection in (self._counts, self._batch_sizes, self._queue_wait, self._compute):
                    collection.clear()
        return BatcherStats(
            **{name: counts.get(name, 0) for name in
               ("requests", "faces", "completed", "rejected", "timed_out", "cancelled", "failed", "batches")},
            batch_sizes=sizes,
            queue_wait_ms=_summary(waits),
            compute_ms=_summary(computes),
        )

    def _serve(self) -> None:
        in_flight: deque[_Started] = deque()
        while True:
            batch = self._collect(block=not in_flight)
            if batch is None:
                break
            started = self._start(batch) if batch else None
            if started is not None:
                in_flight.append(started)
            elif in_flight:  # nothing to start now: answer the batch in flight first
                self._finish(in_flight.popleft())
            while len(in_flight) >= self._in_flight_limit:
                self._finish(in_flight.popleft())
        while in_flight:
            self._finish(in_flight.popleft())

    def _collect(self, block: bool = True) -> list[_Request] | None:
        """The next batch to run, or None once closed and drained. [] when everything taken had
        expired, or, without ``block``, when the queue does not make a batch to start right now."""
        with self._lock:
            if not block and not self._pending:
                return None if self._closing else []
            while not self._pending and not self._closing:
                self._arrived.wait()
            if not self._pending:
                return None
            # The wait counts from the later of the oldest arrival and the end of the last batch, so
            # callers answered by that batch can rejoin: closed-loop clients then share one batch
            # instead of settling into groups that take turns.
            dispatch_at = max(self._pending[0].enqueued, self._last_done) + self.max_delay_s
            if not block and not (self._closing or self._ready() or time.perf_counter() >= dispatch_at):
                return []
            while not self._closing and not self._ready():
                remaining = dispatch_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            return self._take()

    def _ready(self) -> bool:
        """Whether the queue already makes a batch worth dispatching before the delay ends."""
        faces = 0
        for request in self._pending:
            if faces + request.size > self.max_batch:
                return True
            faces += request.size
        return faces == self.max_batch or faces in self.preferred_batches

    def _take(self) -> list[_Request]:
        now = time.perf_counter()
        batch: list[_Request] = []
        faces = 0
        while self._pending and faces + self._pending[0].size <= self.max_batch:
            request = self._pending.popleft()
            self._queued_faces -= request.size
            if request.expires is not None and now > request.expires:
                self._counts["timed_out"] += 1
                request.future.set_exception(DeadlineExceededError(
                    f"the request waited {1000 * (now - request.enqueued):.1f} ms in the queue, past its "
                    f"deadline of {1000 * (request.expires - request.enqueued):.1f} ms; it was not run"
                ))
            elif not request.future.set_running_or_notify_cancel():
                self._counts["cancelled"] += 1
            else:
                batch.append(request)
                faces += request.size
                self._queue_wait.append(1000 * (now - request.enqueued))
        return batch

    def _start(self, batch: list[_Request]) -> "_Started | None":
        """Hand the batch to the backend; a backend that fails to start it fails its futures."""
        images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
        occlusion = batch[0].occlusion if len(batch) == 1 else np.concatenate([r.occlusion for r in batch])
        start = time.perf_counter()
        try:
            outcome = self._run_batch(images, occlusion)
        except BaseException as exc:  # noqa: BLE001 - each caller gets the failure; the worker serves on
            self._fail(batch, len(images), exc)
            return None
        wait = outcome if self._in_flight_limit > 1 else (lambda: outcome)
        return _Started(batch, len(images), start, wait)

    def _finish(self, started: "_Started") -> None:
        batch = started.batch
        try:
            embeddings = started.wait()
        except BaseException as exc:  # noqa: BLE001 - as in _start
            self._fail(batch, started.faces, exc)
            return
        done = time.perf_counter()
        elapsed = 1000 * (done - started.at)
        with self._lock:
            self._last_done = done
            self._counts["completed"] += len(batch)
            self._counts["batches"] += 1
            self._batch_sizes[started.faces] += 1
            self._compute.extend([elapsed] * len(batch))
        offset = 0
        for request in batch:
            request.future.set_result(embeddings[offset] if request.single else embeddings[offset:offset + request.size])
            offset += request.size

    def _fail(self, batch: list[_Request], faces: int, exc: BaseException) -> None:
        with self._lock:
            self._counts["failed"] += len(batch)
            self._counts["batches"] += 1
            self._batch_sizes[faces] += 1
        for request in batch:
            request.future.set_exception(exc)


@dataclass(eq=False)
class _Started:
    """A batch handed to the backend, and the call that returns its embeddings."""

    batch: list[_Request]
    faces: int
    at: float
    wait: Callable[[], np.ndarray]


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(values.max())}
