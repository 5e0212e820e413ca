"""The batcher under faults: whatever the backend or the callers do, every accepted request is answered
exactly once and the worker keeps serving (or, if it cannot, fails everything at once and says why)."""

from __future__ import annotations

import gc
import itertools
import math
import random
import re
import threading
import time
import warnings
import weakref
from collections import Counter
from concurrent.futures import Future
from concurrent.futures import wait as wait_for

import numpy as np
import pytest

from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import BatcherClosedError, DeadlineExceededError, QueueFullError, Recognizer
from pdsn.runtime.batcher import MAX_DELAY_MS, BackendOutputError, BatcherFailedError, DynamicBatcher

WIDTH = 4
NAN_ID = 666


def faces(*ids: int) -> np.ndarray:
    """One 2×2 face per id, filled with it."""
    return np.broadcast_to(np.asarray(ids, np.int64)[:, None, None, None], (len(ids), 2, 2, 3)).copy()


def masks(count: int) -> np.ndarray:
    return np.zeros((count, 25), np.float32)


def rows(images: np.ndarray) -> np.ndarray:
    """What a good backend returns: face k embeds as a row of k's (a row of NaN for ``NAN_ID``)."""
    ids = images.reshape(len(images), -1)[:, 0].astype(np.float32)
    ids[ids == NAN_ID] = np.nan
    return np.repeat(ids[:, None], WIDTH, axis=1)


class HeldEngine:
    """A good backend that can be held inside a batch, so that later requests queue up behind it."""

    def __init__(self, mangle=None) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.mangle = mangle

    def __call__(self, images: np.ndarray, occlusion: np.ndarray) -> object:
        self.entered.set()
        self.release.wait(10)
        out = rows(images)
        return self.mangle(out) if self.mangle and images.max() >= 100 else out

    def occupy(self, batcher: DynamicBatcher) -> Future:
        self.release.clear()
        self.entered.clear()
        future = batcher.submit(faces(0), masks(1))
        assert self.entered.wait(5)
        return future


def started(run):
    """``run`` in pipelined form: the call ``start`` returns hands back what ``run`` returned."""

    def start(images: np.ndarray, occlusion: np.ndarray):
        out = run(images, occlusion)
        return lambda: out

    return start


def make(engine, **kwargs) -> DynamicBatcher:
    return DynamicBatcher(engine, **{"max_batch": 4, "max_delay_ms": 0.0, "embedding_size": WIDTH, **kwargs})


def counting(future: Future, calls: Counter) -> Future:
    future.add_done_callback(lambda f: calls.update([id(f)]))
    return future


def test_a_cancelled_request_whose_deadline_passes_is_skipped_once():
    engine = HeldEngine()
    batcher = make(engine)
    calls: Counter = Counter()
    blocker = engine.occupy(batcher)
    doomed = counting(batcher.submit(faces(1), masks(1), deadline=0.005), calls)
    assert doomed.cancel()
    time.sleep(0.03)
    engine.release.set()
    assert blocker.result(5)[0, 0] == 0
    assert batcher.submit(faces(2), masks(1)).result(5)[0, 0] == 2
    # The race that killed the worker: cancellations racing expiry under load, for half a second.
    futures = []
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        try:
            future = counting(batcher.submit(faces(3), masks(1), deadline=0.0005), calls)
        except QueueFullError:
            time.sleep(0.0001)
            continue
        futures.append(future)
        future.cancel()
    assert batcher.healthy
    batcher.close(timeout=10)
    assert all(f.done() for f in futures) and calls[id(doomed)] == 1
    assert set(calls.values()) == {1} and len(calls) == len(futures) + 1
    stats = batcher.stats()
    assert stats.requests == stats.completed + stats.failed + stats.timed_out + stats.cancelled


def test_cancelled_requests_give_their_queue_room_back():
    engine = HeldEngine()
    batcher = make(engine, queue_size=4)
    blocker = engine.occupy(batcher)
    queued = [batcher.submit(faces(1), masks(1)) for _ in range(4)]
    with pytest.raises(QueueFullError):
        batcher.submit(faces(2), masks(1))
    assert all(f.cancel() for f in queued[:3])  # e.g. callers whose service deadline passed
    later = [batcher.submit(faces(2), masks(1)) for _ in range(3)]
    with pytest.raises(QueueFullError):
        batcher.submit(faces(3), masks(1))
    engine.release.set()
    assert blocker.result(5)[0, 0] == 0 and queued[3].result(5)[0, 0] == 1
    assert [f.result(5)[0, 0] for f in later] == [2, 2, 2]
    batcher.close(timeout=10)
    stats = batcher.stats()
    assert stats.cancelled == 3 and stats.completed == 5 and stats.rejected == 2
    assert stats.requests == stats.completed + stats.failed + stats.timed_out + stats.cancelled


def test_the_largest_delay_is_safe_and_a_larger_one_is_refused():
    with pytest.raises(
        ValueError, match=r"max_delay_ms must be a finite number of milliseconds in \[0, 60000\], got 1e\+300"
    ):
        make(HeldEngine(), max_delay_ms=1e300)
    batcher = make(HeldEngine(), max_delay_ms=MAX_DELAY_MS)
    waiting = batcher.submit(faces(1), masks(1))
    time.sleep(0.05)
    assert batcher.healthy and not waiting.done(), "the request waits for company, up to a minute"
    batcher.close(timeout=5)
    assert waiting.result(0)[0, 0] == 1, "close dispatches it at once"


@pytest.mark.parametrize(
    ("mangle", "returned"),
    [
        (lambda out: out[:-1], "a float32 array of shape (2, 4)"),
        (lambda out: np.vstack([out, out[:1]]), "a float32 array of shape (4, 4)"),
        (lambda out: out[:, :3], "a float32 array of shape (3, 3)"),
        (lambda out: out[:, 0], "a float32 array of shape (3,)"),
        (lambda out: out.astype(np.int64), "a int64 array of shape (3, 4)"),
        (lambda out: out.tolist(), "a list"),
        (lambda out: None, "a NoneType"),
    ],
    ids=["fewer-rows", "more-rows", "wrong-width", "one-dimensional", "integers", "list", "none"],
)
@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_a_malformed_result_fails_its_batch_and_the_worker_goes_on(mangle, returned, pipelined):
    engine = HeldEngine(mangle)
    run = started(engine) if pipelined else engine
    batcher = make(run, pipelined=pipelined)
    blocker = engine.occupy(batcher)
    bad = [batcher.submit(faces(100), masks(1)), batcher.submit(faces(101, 102), masks(2))]
    engine.release.set()
    assert blocker.result(5)[0, 0] == 0
    expected = f"the backend returned {returned} for a batch of 3 faces; expected a float array of shape (3, 4)"
    for future in bad:
        with pytest.raises(BackendOutputError, match=re.escape(expected)):
            future.result(5)
    assert batcher.submit(faces(7), masks(1)).result(5)[0].tolist() == [7.0] * WIDTH
    assert batcher.healthy
    batcher.close(timeout=5)
    assert (batcher.stats().failed, batcher.stats().completed) == (2, 2)


def test_non_finite_rows_fail_only_their_own_requests():
    engine = HeldEngine(lambda out: np.where(out == 104, np.inf, out))
    batcher = make(engine)
    engine.occupy(batcher)
    first = batcher.submit(faces(1), masks(1), single=True)
    nan_pair = batcher.submit(faces(2, NAN_ID), masks(2))
    inf_one = batcher.submit(faces(104), masks(1))
    engine.release.set()
    assert first.result(5).tolist() == [1.0] * WIDTH
    with pytest.raises(BackendOutputError, match=re.escape("NaN or Inf in embedding(s) [1] of this request's 2")):
        nan_pair.result(5)
    with pytest.raises(BackendOutputError, match=re.escape("NaN or Inf in embedding(s) [0] of this request's 1")):
        inf_one.result(5)
    assert batcher.healthy
    batcher.close(timeout=5)
    stats = batcher.stats()
    assert (stats.completed, stats.failed, stats.batches) == (2, 2, 2)


def test_done_callbacks_cannot_hang_or_kill_the_worker():
    engine = HeldEngine()
    batcher = make(engine)
    seen: dict[str, object] = {}

    def waits_for_more(future: Future) -> None:
        seen["thread"] = threading.current_thread()
        seen["own result"] = future.result()[0, 0]  # done: fine anywhere
        try:
            batcher.submit(faces(9), masks(1)).result()
        except RuntimeError as exc:
            seen["refused"] = str(exc)

    def exits(future: Future) -> None:
        raise SystemExit("a callback that exits")

    def fails(future: Future) -> None:
        raise ValueError("a callback with a bug")

    engine.occupy(batcher)
    for k, callback in ((1, waits_for_more), (2, exits), (3, fails)):
        batcher.submit(faces(k), masks(1)).add_done_callback(callback)
    engine.release.set()
    assert batcher.submit(faces(4), masks(1)).result(5)[0, 0] == 4
    assert seen["thread"] is not threading.current_thread() and seen["own result"] == 1
    assert "called from a done-callback, which runs on the batcher's worker thread" in seen["refused"]
    assert "on a thread of your own" in seen["refused"]
    assert batcher.healthy
    engine.occupy(batcher)
    batcher.submit(faces(5), masks(1)).add_done_callback(lambda f: batcher.close())
    queued_after = batcher.submit(faces(6, 6, 6, 6), masks(4))  # too big to join that batch: it runs after
    engine.release.set()
    assert queued_after.result(5)[:, 0].tolist() == [6] * 4, "close from a callback lets the worker drain"
    seen["thread"].join(5)
    assert not seen["thread"].is_alive() and not batcher.healthy
    with pytest.raises(BatcherClosedError):
        batcher.submit(faces(7), masks(1))


def test_a_recognizer_callback_may_close_it_but_not_wait_on_it(tiny_bundle):
    face = seeded_faces(1, seed=3)[0]
    recognizer = Recognizer.open(tiny_bundle, max_batch=4, max_delay_ms=300.0)
    seen: dict[str, object] = {}

    def callback(future: Future) -> None:
        seen["thread"] = threading.current_thread()
        for name, call in (
            ("embed", lambda: recognizer.embed(face)),
            ("verify", lambda: recognizer.verify(face, face)),
        ):
            try:
                call()
            except RuntimeError as exc:
                seen[name] = str(exc)
        seen["submitted"] = recognizer.submit(face)  # submitting is fine; waiting here is not
        recognizer.close()

    recognizer.submit(face).add_done_callback(callback)  # the delay keeps it queued until this is added
    deadline = time.perf_counter() + 10
    while "submitted" not in seen and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert seen["thread"] is not threading.current_thread()
    assert seen["embed"].startswith("Recognizer.embed() was called from a done-callback")
    assert seen["verify"].startswith("Recognizer.verify() was called from a done-callback")
    assert seen["submitted"].result(10).shape == (recognizer.contract.embedding_size,)
    seen["thread"].join(10)
    assert not seen["thread"].is_alive()
    assert recognizer.health().reason == "the batcher was closed"
    with pytest.raises(BatcherClosedError):
        recognizer.submit(face)


def test_a_worker_that_cannot_go_on_fails_everything_at_once(monkeypatch):
    engine = HeldEngine()
    released = threading.Event()
    batcher = make(engine, on_stop=released.set)
    blocker = engine.occupy(batcher)
    queued = [batcher.submit(faces(k), masks(1)) for k in (1, 2)]

    def broken(block: bool = True) -> None:
        raise MemoryError("injected")

    monkeypatch.setattr(batcher, "_collect", broken)
    engine.release.set()
    assert blocker.result(5)[0, 0] == 0
    for future in queued:
        with pytest.raises(BatcherFailedError, match=r"stopped on an unexpected error \(MemoryError\('injected'\)\)"):
            future.result(5)
    assert released.wait(5), "the backend is released"
    health = batcher.health()
    assert not health.healthy and "MemoryError('injected')" in health.reason
    with pytest.raises(BatcherFailedError, match="accepts no work. Open a new Recognizer"):
        batcher.submit(faces(3), masks(1))
    batcher.close(timeout=5)


BAD_SETTINGS = (
    [("max_batch", value) for value in ("4", None, 1.5, True, 0, -1, math.nan)]
    + [("queue_size", value) for value in ("8", 1.5, True, 0, -4, 2)]
    + [("max_delay_ms", value) for value in ("2", None, True, False, math.nan, math.inf, -1.0, 1e300, 60_001)]
)


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_batcher_settings_are_named(name, value):
    with pytest.raises((TypeError, ValueError), match=rf"^{name} must .*got {re.escape(repr(value))}"):
        make(HeldEngine(), **{"max_batch": 4, name: value})


@pytest.mark.parametrize("deadline", ["1", True, math.nan, math.inf, 0, -1.0])
def test_bad_deadlines_are_named(deadline):
    batcher = make(HeldEngine())
    with pytest.raises(
        (TypeError, ValueError),
        match=rf"^deadline must be None or a finite number of seconds > 0, got {re.escape(repr(deadline))}",
    ):
        batcher.submit(faces(1), masks(1), deadline=deadline)
    assert batcher.submit(faces(1), masks(1), deadline=None).result(5)[0, 0] == 1
    batcher.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_batch", "8"), ("max_delay_ms", math.nan), ("queue_size", 1.5)]
    + [("threads", value) for value in ("4", 0, -2, 1.5, True)],
)
def test_bad_recognizer_settings_are_named_before_the_bundle_is_read(tmp_path, name, value):
    with pytest.raises((TypeError, ValueError), match=rf"^{name} must .*got {re.escape(repr(value))}"):
        Recognizer.open(tmp_path / "no-such-bundle", **{name: value})


@pytest.fixture(scope="module")
def recognizer(tiny_bundle):
    with Recognizer.open(tiny_bundle, max_batch=4, max_delay_ms=0.0) as opened:
        yield opened


@pytest.mark.parametrize("threshold", ["0.5", True, math.nan, math.inf, -1.5, 1.01])
def test_bad_verify_thresholds_are_named(recognizer, threshold):
    face = seeded_faces(1, seed=1)[0]
    with pytest.raises(
        (TypeError, ValueError),
        match=rf"^threshold must be None or a finite number in \[-1, 1\], got {re.escape(repr(threshold))}",
    ):
        recognizer.verify(face, face, threshold=threshold)


def test_good_verify_thresholds(recognizer):
    face = seeded_faces(1, seed=1)[0]
    assert [recognizer.verify(face, face, threshold=t).match for t in (None, -1, 0.5, 1.0 - 1e-3)] == [
        None,
        True,
        True,
        True,
    ]


def test_a_dropped_recognizer_releases_its_thread_and_backend(tiny_bundle):
    before = set(threading.enumerate())
    face = seeded_faces(1, seed=2)[0]
    recognizer = Recognizer.open(tiny_bundle, max_batch=2, max_delay_ms=0.0)
    queued = recognizer.submit(face)
    backend = weakref.ref(recognizer._backend)
    (worker,) = [t for t in threading.enumerate() if t not in before and t.name == "pdsn-batcher"]
    with pytest.warns(ResourceWarning, match="garbage-collected without close()"):
        del recognizer
        gc.collect()
    worker.join(10)
    assert not worker.is_alive(), "the worker thread ends"
    assert queued.done() and queued.exception(0) is None, "what was queued is still answered"
    gc.collect()
    assert backend() is None, "the backend is freed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closed = Recognizer.open(tiny_bundle, max_batch=2)
        closed.close()
        del closed
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], "a closed Recognizer does not warn"


class FlakyEngine:
    """A backend that misbehaves at random: raises, returns the wrong rows, width or type, NaN rows,
    or is slow. Each batch rolls once; ``start`` is its pipelined form (the fault shows in the wait)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray, occlusion: np.ndarray) -> object:
        return self.start(images, occlusion)()

    def start(self, images: np.ndarray, occlusion: np.ndarray):
        with self.lock:
            roll, row, delay = self.rng.random(), self.rng.randrange(len(images)), self.rng.uniform(0.002, 0.015)
        if roll < 0.06:
            raise ValueError("the flaky backend could not start this batch")
        out = rows(images)
        faults = [
            (0.12, ValueError("the flaky backend failed on this batch")),
            (0.18, out[:-1]),
            (0.24, np.vstack([out, out[:1]])),
            (0.30, out[:, :2]),
            (0.33, out.tolist()),
        ]
        if 0.33 <= roll < 0.43:
            out[row] = np.nan

        def wait() -> object:
            if 0.43 <= roll < 0.6:
                time.sleep(delay)
            for upto, fault in faults:
                if roll < upto:
                    if isinstance(fault, Exception):
                        raise fault
                    return fault
            return out

        return wait


@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_mixed_faults_every_request_answered_exactly_once(pipelined):
    engine = FlakyEngine(seed=11 + pipelined)
    name = f"faults-mixed-{pipelined}"
    run = engine.start if pipelined else engine
    batcher = make(run, max_batch=8, max_delay_ms=1.0, queue_size=64, pipelined=pipelined, name=name)
    ids = itertools.count(1)
    lock = threading.Lock()
    tracked: dict[int, tuple[Future, list[int]]] = {}
    calls: Counter = Counter()
    refusals: list[str] = []

    def on_done(future: Future) -> None:
        with lock:
            calls[id(future)] += 1
        roll = random.random()
        if roll < 0.05:
            raise ValueError("a callback with a bug")
        if roll < 0.08 and threading.current_thread().name == name:
            k = next(ids)
            try:
                track(batcher.submit(faces(k), masks(1)), [k]).result()
            except (QueueFullError, BatcherClosedError):
                pass
            except RuntimeError as exc:
                refusals.append(str(exc))

    def track(future: Future, request: list[int]) -> Future:
        with lock:
            tracked[id(future)] = (future, request)
        future.add_done_callback(on_done)
        return future

    def client(seed: int, until: float) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < until:
            request = [next(ids) for _ in range(rng.randint(1, 3))]
            deadline = rng.choice([None, None, 0.001, 0.004, 0.02])
            try:
                future = batcher.submit(faces(*request), masks(len(request)), deadline=deadline)
            except QueueFullError:
                time.sleep(0.001)
                continue
            track(future, request)
            roll = rng.random()
            if roll < 0.15:
                future.cancel()
            elif roll < 0.25:
                time.sleep(rng.uniform(0, 0.003))
                future.cancel()
            elif roll < 0.5:
                wait_for([future], timeout=2)
            time.sleep(rng.uniform(0, 0.001))

    until = time.perf_counter() + 2.0
    clients = [threading.Thread(target=client, args=(seed, until)) for seed in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(10)
    (worker,) = [t for t in threading.enumerate() if t.name == name]
    assert worker.is_alive() and batcher.healthy, batcher.health().reason
    batcher.close(timeout=10)
    assert not worker.is_alive()

    outcomes: Counter = Counter()
    for key, (future, request) in tracked.items():
        assert future.done() and calls[key] == 1, "every accepted future resolves exactly once"
        if future.cancelled():
            outcomes["cancelled"] += 1
            continue
        error = future.exception(0)
        if error is None:
            assert future.result(0)[:, 0].tolist() == request, "a request gets its own rows"
            outcomes["ok"] += 1
        else:
            assert isinstance(error, (DeadlineExceededError, BackendOutputError, ValueError)), repr(error)
            outcomes[type(error).__name__] += 1
    stats = batcher.stats()
    assert stats.requests == len(tracked) == stats.completed + stats.failed + stats.timed_out + stats.cancelled
    for outcome in ("ok", "cancelled", "DeadlineExceededError", "BackendOutputError", "ValueError"):
        assert outcomes[outcome] > 0, f"the load never produced {outcome}: {outcomes}"
    assert refusals and all("done-callback" in message for message in refusals)
