"""Dynamic batching: requests from any number of threads run together as batches on one worker.

A request is one or more prepared faces that stay together. The worker takes the oldest request,
then keeps adding whole requests (first in, first out) until one of these holds:

- the batch has ``max_batch`` faces, or the next request would not fit;
- ``max_delay_ms`` has passed since the oldest request in the batch arrived, or since the last
  batch finished if that was later (so the callers it answered can rejoin);
- the batch size is one the backend prefers (e.g. a CUDA-graph bucket) and nothing else is queued.

Faces, not requests, count towards ``max_batch`` and the queue's bound. A full queue rejects at
once (``QueueFullError``); a request whose future was cancelled while queued is skipped (even if
its deadline has passed too); a request still queued when its deadline passes fails with
``DeadlineExceededError`` and is never run. ``close()`` runs everything already accepted, then
stops.

Every accepted request is answered exactly once, whatever the backend or the callers do:

- an exception from the backend fails that batch's futures and the worker goes on;
- so does a result that is not one float row of ``embedding_size`` per face
  (``BackendOutputError``); NaN or Inf rows fail only the requests they belong to;
- a done-callback runs on the worker thread: its exceptions are logged and never reach the worker,
  waiting there for a result (``Future.result()``, ``Recognizer.embed()``) raises ``RuntimeError``
  instead of deadlocking, and ``close()`` there returns at once (the worker drains, then stops);
- should the worker itself fail, the batcher fails every request not yet answered and all later
  ones with ``BatcherFailedError``, and ``health()`` reports why.

With ``pipelined``, ``run_batch`` only starts a batch (e.g. queues its copies and engine run on
GPU streams) and returns a call that waits for its embeddings. The worker then keeps two batches
in flight: while one computes, a batch the queue already makes (by the rules above, without
waiting for the delay) is started, so its input copies overlap the first one's compute. When
the queue makes none, the worker answers the batch in flight first.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdsn.errors import PdsnError
from pdsn.model.validation import check_int, check_real

# Queue waits and compute times kept for percentiles: the most recent this many requests.
TIMING_WINDOW = 100_000
# The longest batching delay accepted: far beyond any useful one, and within every platform's waits.
MAX_DELAY_MS = 60_000.0

logger = logging.getLogger(__name__)


class QueueFullError(PdsnError, RuntimeError):
    """The batcher's queue is full: the caller should back off, shed load or retry later."""


class DeadlineExceededError(PdsnError, TimeoutError):
    """A request waited in the queue past its deadline and was not run."""


class BatcherClosedError(PdsnError, RuntimeError):
    """The batcher was closed and accepts no new work."""


class BatcherFailedError(BatcherClosedError):
    """The batcher's worker stopped on an unexpected error; every request not yet answered fails."""


class BackendOutputError(PdsnError, RuntimeError):
    """The backend returned something other than one finite float embedding per face."""


@dataclass(frozen=True)
class BatcherHealth:
    """Whether the batcher serves requests (for a readiness probe), and why not when it does not."""

    healthy: bool
    reason: str = ""


def check_settings(max_batch: int, max_delay_ms: float, queue_size: int | None) -> int:
    """Refuse bad batcher settings; returns the queue size (None: 4 × ``max_batch``)."""
    check_int(max_batch, "max_batch", 1)
    check_real(max_delay_ms, "max_delay_ms", 0.0, MAX_DELAY_MS, unit="milliseconds")
    check_int(queue_size, "queue_size", 1, optional=True)
    queue = 4 * max_batch if queue_size is None else queue_size
    if queue < max_batch:
        raise ValueError(f"queue_size must hold at least one full batch (max_batch = {max_batch} faces), got {queue}")
    return queue


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
    ``pipelined`` for ``run_batch(images, occlusion) -> (call that waits and returns embeddings)``.

    ``embedding_size``: the width every result row must have (None: any). ``on_stop`` runs on the
    worker thread once it has answered everything and stops, e.g. to release the backend it used.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray, np.ndarray], Any],
        max_batch: int,
        max_delay_ms: float = 2.0,
        queue_size: int | None = None,
        preferred_batches: Sequence[int] = (),
        name: str = "pdsn-batcher",
        pipelined: bool = False,
        embedding_size: int | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.queue_size = check_settings(max_batch, max_delay_ms, queue_size)
        check_int(embedding_size, "embedding_size", 1, optional=True)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.embedding_size = embedding_size
        self.preferred_batches = frozenset(b for b in preferred_batches if 1 <= b <= self.max_batch)
        self._run_batch = run_batch
        self._on_stop = on_stop
        self._in_flight_limit = 2 if pipelined else 1
        self._pending: deque[_Request] = deque()
        self._queued_faces = 0
        self._closing = False
        self._failure = ""
        self._last_done = 0.0
        # Every future handed out and still referenced: the ones to fail should the worker break.
        self._issued: weakref.WeakSet[Future] = weakref.WeakSet()
        # Re-entrant: a Recognizer's finalizer may close the batcher from a garbage collection that
        # happens to run on the worker thread while it holds the lock.
        self._lock = threading.RLock()
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

        ``deadline``: seconds this request may wait in the queue before it fails unrun (None: no
        limit). The future's result is the request's embeddings, or with ``single`` the one
        embedding of a one-face request.
        """
        size = len(images)
        if not 1 <= size <= self.max_batch:
            raise ValueError(f"a request holds 1..max_batch ({self.max_batch}) faces, got {size}; split it")
        if len(occlusion) != size:
            raise ValueError(f"occlusion has {len(occlusion)} rows for {size} images")
        check_real(deadline, "deadline", 0.0, low_open=True, optional=True, unit="seconds")
        if single and size != 1:
            raise ValueError(f"single=True needs a one-face request, got {size} faces")
        now = time.perf_counter()
        future = _BatchFuture(self._worker)
        request = _Request(images, occlusion, future, now, None if deadline is None else now + deadline, single)
        with self._lock:
            if self._failure:
                raise BatcherFailedError(f"{self._failure}; it accepts no work. Open a new Recognizer")
            if self._closing:
                raise BatcherClosedError("the batcher was closed; open a new Recognizer to submit more work")
            if self._queued_faces + size > self.queue_size:
                self._drop_cancelled()
            if self._queued_faces + size > self.queue_size:
                self._counts["rejected"] += 1
                raise QueueFullError(
                    f"the queue holds {self._queued_faces} of {self.queue_size} faces and cannot take "
                    f"{size} more; back off and retry, or open the Recognizer with a larger queue_size"
                )
            self._pending.append(request)
            self._issued.add(future)
            self._queued_faces += size
            self._counts["requests"] += 1
            self._counts["faces"] += size
            self._arrived.notify()
        return future

    def check_room(self, faces: int) -> None:
        """``QueueFullError`` (counted as a rejection) unless the queue takes ``faces`` more now, for callers
        that submit one request's faces in several parts and want them admitted whole."""
        with self._lock:
            self._drop_cancelled()
            room = self.queue_size - self._queued_faces
            if faces > room:
                self._counts["rejected"] += 1
                raise QueueFullError(
                    f"the queue holds {self._queued_faces} of {self.queue_size} faces and cannot take {faces} more "
                    f"now; back off and retry"
                )

    def stop(self) -> None:
        """Refuse new work and return at once; the worker runs everything already accepted, then stops."""
        with self._lock:
            self._closing = True
            self._arrived.notify()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, run everything already accepted, and stop the worker.

        From the worker thread itself (a done-callback) this only stops it: it cannot wait for itself.
        """
        self.stop()
        if threading.current_thread() is self._worker:
            return
        self._worker.join(timeout)
        if self._worker.is_alive():
            raise TimeoutError(f"the batcher did not drain within {timeout} s; accepted work is still running")

    @property
    def closed(self) -> bool:
        return self._closing

    def health(self) -> BatcherHealth:
        """Whether the batcher serves requests; when not, why (closed, or the worker failed)."""
        with self._lock:
            if self._failure:
                return BatcherHealth(False, self._failure)
            if self._closing:
                return BatcherHealth(False, "the batcher was closed")
            if not self._worker.is_alive():
                return BatcherHealth(False, "the batcher's worker thread is not running")
        return BatcherHealth(True)

    @property
    def healthy(self) -> bool:
        return self.health().healthy

    def check_may_wait(self, call: str) -> None:
        """Refuse ``call`` on the worker thread (a done-callback runs there): it would wait for itself."""
        if threading.current_thread() is self._worker:
            raise _waiting_on_worker(call)

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
            **{
                name: counts.get(name, 0)
                for name in (
                    "requests",
                    "faces",
                    "completed",
                    "rejected",
                    "timed_out",
                    "cancelled",
                    "failed",
                    "batches",
                )
            },
            batch_sizes=sizes,
            queue_wait_ms=_summary(waits),
            compute_ms=_summary(computes),
        )

    def _serve(self) -> None:
        try:
            self._serve_until_drained()
        except BaseException as exc:
            self._break(exc)
        finally:
            self._stopped()

    def _serve_until_drained(self) -> None:
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

    def _break(self, exc: BaseException) -> None:
        """The worker cannot go on: refuse all work from now on and fail every request not yet answered."""
        logger.error("the batcher's worker failed; failing all of its requests", exc_info=exc)
        with self._lock:
            self._failure = f"the batcher's worker stopped on an unexpected error ({exc!r})"
            self._closing = True
            self._pending.clear()
            self._queued_faces = 0
            unanswered = [future for future in self._issued if not future.done()]
            self._counts["failed"] += len(unanswered)
        error = BatcherFailedError(f"{self._failure}; this request was not answered. Open a new Recognizer")
        error.__cause__ = exc
        for future in unanswered:
            _answer(future, error=error)

    def _stopped(self) -> None:
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                logger.exception("releasing the batcher's backend failed")

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
            batch, expired = self._take()
        for future, error in expired:  # outside the lock: done-callbacks run here
            _answer(future, error=error)
        return batch

    def _ready(self) -> bool:
        """Whether the queue already makes a batch worth dispatching before the delay ends."""
        faces = 0
        for request in self._pending:
            if faces + request.size > self.max_batch:
                return True
            faces += request.size
        return faces == self.max_batch or faces in self.preferred_batches

    def _drop_cancelled(self) -> None:
        """Give back the queue room of requests their callers cancelled (e.g. past a service deadline)."""
        kept = deque(r for r in self._pending if not r.future.cancelled())
        dropped = len(self._pending) - len(kept)
        if dropped:
            self._queued_faces = sum(r.size for r in kept)
            self._counts["cancelled"] += dropped
            self._pending = kept

    def _take(self) -> tuple[list[_Request], list[tuple[Future, DeadlineExceededError]]]:
        """The batch, and the expired requests with the error each is to fail with."""
        now = time.perf_counter()
        batch: list[_Request] = []
        expired: list[tuple[Future, DeadlineExceededError]] = []
        faces = 0
        while self._pending and faces + self._pending[0].size <= self.max_batch:
            request = self._pending.popleft()
            self._queued_faces -= request.size
            if not _claim(request.future):
                self._counts["cancelled"] += 1
            elif request.expires is not None and now > request.expires:
                self._counts["timed_out"] += 1
                error = DeadlineExceededError(
                    f"the request waited {1000 * (now - request.enqueued):.1f} ms in the queue, past its "
                    f"deadline of {1000 * (request.expires - request.enqueued):.1f} ms; it was not run"
                )
                expired.append((request.future, error))
            else:
                batch.append(request)
                faces += request.size
                self._queue_wait.append(1000 * (now - request.enqueued))
        return batch, expired

    def _start(self, batch: list[_Request]) -> _Started | None:
        """Hand the batch to the backend; a backend that fails to start it fails its futures."""
        faces = sum(request.size for request in batch)
        start = time.perf_counter()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
            occlusion = batch[0].occlusion if len(batch) == 1 else np.concatenate([r.occlusion for r in batch])
            outcome = self._run_batch(images, occlusion)
            if self._in_flight_limit > 1 and not callable(outcome):
                raise BackendOutputError(
                    f"a pipelined run_batch must return a call that waits for the embeddings; it returned "
                    f"{_describe(outcome)}"
                )
        except BaseException as exc:
            self._fail(batch, faces, exc)
            return None
        wait = outcome if self._in_flight_limit > 1 else (lambda: outcome)
        return _Started(batch, faces, start, wait)

    def _finish(self, started: _Started) -> None:
        """Answer each request of a started batch with its rows, or with why it has none."""
        batch, faces = started.batch, started.faces
        try:
            embeddings = self._checked(started.wait(), faces)
        except BaseException as exc:
            self._fail(batch, faces, exc)
            return
        done = time.perf_counter()
        finite = np.isfinite(embeddings).all(axis=1)
        answers: list[tuple[Future, Any, BaseException | None]] = []
        offset = 0
        for request in batch:
            rows = slice(offset, offset + request.size)
            if finite[rows].all():
                answers.append((request.future, embeddings[offset] if request.single else embeddings[rows], None))
            else:
                bad = np.flatnonzero(~finite[rows]).tolist()
                error = BackendOutputError(
                    f"the backend returned NaN or Inf in embedding(s) {bad} of this request's {request.size} "
                    f"(rows {offset}..{offset + request.size - 1} of a batch of {faces}); the request fails "
                    f"and the rest of its batch is unaffected. The model or backend is at fault (e.g. FP16 overflow)"
                )
                answers.append((request.future, None, error))
            offset += request.size
        failed = sum(problem is not None for _, _, problem in answers)
        with self._lock:
            self._last_done = done
            self._counts["completed"] += len(batch) - failed
            self._counts["failed"] += failed
            self._counts["batches"] += 1
            self._batch_sizes[faces] += 1
            self._compute.extend([1000 * (done - started.at)] * len(batch))
        for future, result, problem in answers:
            _answer(future, result, problem)

    def _checked(self, embeddings: object, faces: int) -> np.ndarray:
        """``embeddings`` when it is one float row of ``embedding_size`` per face; else a clear error."""
        width = self.embedding_size
        if not (
            isinstance(embeddings, np.ndarray)
            and embeddings.ndim == 2
            and np.issubdtype(embeddings.dtype, np.floating)
            and len(embeddings) == faces
            and (width is None or embeddings.shape[1] == width)
        ):
            raise BackendOutputError(
                f"the backend returned {_describe(embeddings)} for a batch of {faces} faces; expected a float "
                f"array of shape ({faces}, {width or 'embedding_size'}), one embedding per face. The backend "
                f"or its model is at fault; no request of this batch was answered with it"
            )
        return embeddings

    def _fail(self, batch: list[_Request], faces: int, exc: BaseException) -> None:
        with self._lock:
            self._counts["failed"] += len(batch)
            self._counts["batches"] += 1
            self._batch_sizes[faces] += 1
        for request in batch:
            _answer(request.future, error=exc)


class _BatchFuture(Future):
    """A request's future: waiting for it on the batcher's own worker thread raises instead of hanging."""

    def __init__(self, worker: threading.Thread) -> None:
        super().__init__()
        self._batcher_worker = worker

    def result(self, timeout: float | None = None) -> Any:
        self._refuse_worker("Future.result()")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._refuse_worker("Future.exception()")
        return super().exception(timeout)

    def _refuse_worker(self, call: str) -> None:
        if not self.done() and threading.current_thread() is self._batcher_worker:
            raise _waiting_on_worker(call)


@dataclass(eq=False)
class _Started:
    """A batch handed to the backend, and the call that returns its embeddings."""

    batch: list[_Request]
    faces: int
    at: float
    wait: Callable[[], np.ndarray]


def _waiting_on_worker(call: str) -> RuntimeError:
    return RuntimeError(
        f"{call} was called from a done-callback, which runs on the batcher's worker thread; it would wait "
        f"for that thread and never return. Wait for results on a thread of your own (e.g. hand the work "
        f"from the callback to an executor)"
    )


def _claim(future: Future) -> bool:
    """Mark a queued request's future running; False when the caller cancelled it (or settled it itself)."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # the caller set a result or started it: the request is no longer ours
        return False


def _answer(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Settle ``future`` unless a caller already did; nothing a done-callback raises reaches the worker."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        logger.warning("a batcher future was already settled (by its caller); the batcher's answer was dropped")
    except BaseException:  # Future logs a callback's Exception itself; this is e.g. a SystemExit
        logger.exception("a done-callback of a batcher future raised; the worker goes on")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
    }
