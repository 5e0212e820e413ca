"""The dynamic batcher: every accepted request answered exactly once, with its own result."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from pdsn.model.sample_faces import occlusion_mix, seeded_faces
from pdsn.runtime import BatcherClosedError, DeadlineExceededError, QueueFullError, Recognizer
from pdsn.runtime.batcher import DynamicBatcher

NO_OCCLUSION = np.zeros((1, 25), np.float32)


class FakeEngine:
    """Embeds request ``k`` (an image filled with k) as a vector filled with k; can be held or poisoned."""

    def __init__(self, delay: float = 0.0) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.delay = delay
        self.seen: list[int] = []
        self.batches: list[int] = []

    def __call__(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(10)
        ids = [int(image.flat[0]) for image in images]
        if -1 in ids:
            raise ValueError("poisoned face in this batch")
        if self.delay:
            time.sleep(random.uniform(0, self.delay))
        self.seen += ids
        self.batches.append(len(ids))
        return np.repeat(np.asarray(ids, np.float32)[:, None], 4, axis=1)

    def hold(self) -> None:
        self.release.clear()
        self.entered.clear()


def face(k: int) -> np.ndarray:
    return np.full((1, 2, 2, 3), k, np.int64)


def submit(batcher: DynamicBatcher, k: int, **kwargs):
    return batcher.submit(face(k), NO_OCCLUSION, single=True, **kwargs)


def occupy(batcher: DynamicBatcher, engine: FakeEngine):
    """Hold the engine inside a batch of request 0, so that later requests wait in the queue."""
    engine.hold()
    running = submit(batcher, 0)
    assert engine.entered.wait(5)
    return running


def test_threads_get_their_own_results_whatever_the_completion_order():
    engine = FakeEngine(delay=0.002)
    batcher = DynamicBatcher(engine, max_batch=8, max_delay_ms=1.0, queue_size=512)
    results: dict[int, float] = {}

    def client(base: int) -> None:
        futures = {base + i: submit(batcher, base + i) for i in range(25)}
        results.update({k: float(f.result(10)[0]) for k, f in futures.items()})

    threads = [threading.Thread(target=client, args=(1000 * t,)) for t in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert results == {k: float(k) for k in results} and len(results) == 300
    assert sorted(engine.seen) == sorted(results)
    stats = batcher.stats()
    assert stats.completed == stats.requests == 300 and max(stats.batch_sizes) <= 8
    assert stats.mean_batch > 1, "concurrent requests should have shared batches"


def test_requests_fill_batches_up_to_max_batch_and_stay_whole():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=4, max_delay_ms=20.0, queue_size=16)
    first = occupy(batcher, engine)
    singles = [submit(batcher, k) for k in range(1, 6)]
    pair = batcher.submit(np.concatenate([face(6), face(7)]), np.repeat(NO_OCCLUSION, 2, axis=0))
    engine.release.set()
    assert pair.result(5)[:, 0].tolist() == [6.0, 7.0]
    assert [f.result(5)[0] for f in [first, *singles]] == [0, 1, 2, 3, 4, 5]
    batcher.close()
    assert engine.batches == [1, 4, 3]
    assert batcher.stats().batch_sizes == {1: 1, 3: 1, 4: 1}


def test_callers_answered_by_a_batch_can_join_the_next():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=4, max_delay_ms=300.0)
    first = occupy(batcher, engine)
    waiting = [submit(batcher, 1), submit(batcher, 2)]
    time.sleep(0.35)  # longer than the delay: on their own they would go as soon as the engine is free
    engine.release.set()
    first.result(5)
    rejoined = submit(batcher, 3)
    assert [f.result(5)[0] for f in [*waiting, rejoined]] == [1, 2, 3]
    batcher.close()
    assert engine.batches == [1, 3]


def test_a_full_queue_rejects_at_once_and_loses_nothing():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=2, max_delay_ms=0.0, queue_size=4)
    running = occupy(batcher, engine)
    queued = [submit(batcher, k) for k in range(1, 5)]
    start = time.perf_counter()
    with pytest.raises(QueueFullError, match="holds 4 of 4 faces"):
        submit(batcher, 5)
    assert time.perf_counter() - start < 1.0
    engine.release.set()
    assert [f.result(5)[0] for f in [running, *queued]] == [0, 1, 2, 3, 4]
    batcher.close()
    stats = batcher.stats()
    assert (stats.rejected, stats.requests, stats.completed) == (1, 5, 5)


def test_a_request_past_its_deadline_fails_and_is_not_run():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=4, max_delay_ms=0.0)
    occupy(batcher, engine)
    late = submit(batcher, 1, deadline=0.01)
    patient = submit(batcher, 2, deadline=30.0)
    time.sleep(0.05)
    engine.release.set()
    with pytest.raises(DeadlineExceededError, match="past its deadline of 10.0 ms"):
        late.result(5)
    assert patient.result(5)[0] == 2
    batcher.close()
    assert 1 not in engine.seen and batcher.stats().timed_out == 1
    with pytest.raises(ValueError, match="deadline must be None or a finite number of seconds > 0, got 0"):
        submit(batcher, 3, deadline=0)


def test_close_drains_accepted_work_then_refuses_new():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=3, max_delay_ms=50.0, queue_size=32)
    engine.hold()
    futures = [submit(batcher, k) for k in range(10)]
    assert engine.entered.wait(5)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    deadline = time.perf_counter() + 5
    while not batcher.closed and time.perf_counter() < deadline:
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError, match="closed"):
        submit(batcher, 99)
    engine.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [f.result(0)[0] for f in futures] == list(range(10))
    assert sorted(engine.seen) == list(range(10))


def test_a_failing_batch_fails_only_its_own_requests():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=2, max_delay_ms=0.0)
    blocker = occupy(batcher, engine)
    poisoned = [submit(batcher, -1), submit(batcher, 1)]
    engine.release.set()
    assert blocker.result(5)[0] == 0
    for future in poisoned:
        with pytest.raises(ValueError, match="poisoned"):
            future.result(5)
    assert submit(batcher, 2).result(5)[0] == 2
    batcher.close()
    stats = batcher.stats()
    assert (stats.failed, stats.completed) == (2, 2)


def test_a_cancelled_request_is_skipped():
    engine = FakeEngine()
    batcher = DynamicBatcher(engine, max_batch=2, max_delay_ms=0.0)
    occupy(batcher, engine)
    cancelled = submit(batcher, 1)
    assert cancelled.cancel()
    engine.release.set()
    assert submit(batcher, 2).result(5)[0] == 2
    batcher.close()
    assert 1 not in engine.seen and batcher.stats().cancelled == 1


def test_the_delay_waits_for_company_but_a_preferred_size_goes_at_once():
    engine = FakeEngine()
    waiting = DynamicBatcher(engine, max_batch=8, max_delay_ms=60.0)
    start = time.perf_counter()
    submit(waiting, 1).result(5)
    assert time.perf_counter() - start >= 0.055
    waiting.close()
    eager = DynamicBatcher(engine, max_batch=8, max_delay_ms=10_000.0, preferred_batches=(1, 4))
    start = time.perf_counter()
    submit(eager, 2).result(5)
    assert time.perf_counter() - start < 5.0
    eager.close()


class PipelinedEngine:
    """A GPU-like backend: ``start`` queues a batch (each runs 30 ms on a worker thread) and returns
    the call that waits for it; the log shows which batches were in flight together."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()

    def start(self, images: np.ndarray, occlusion: np.ndarray):
        self.gate.wait(5)
        first = int(images[0].flat[0])
        if first == -1:
            raise RuntimeError("could not queue this batch")
        result: dict[str, np.ndarray] = {}

        def compute() -> None:
            time.sleep(0.03)
            result["out"] = np.repeat(images.reshape(len(images), -1)[:, :1].astype(np.float32), 4, axis=1)

        worker = threading.Thread(target=compute)
        with self.lock:
            self.log.append(("start", first))
        worker.start()

        def wait() -> np.ndarray:
            worker.join()
            with self.lock:
                self.log.append(("wait", first))
            if first == -2:
                raise RuntimeError("this batch failed on the device")
            return result["out"]

        return wait


def test_a_pipelined_backend_starts_the_next_batch_while_one_computes():
    engine = PipelinedEngine()
    batcher = DynamicBatcher(engine.start, max_batch=2, max_delay_ms=0, pipelined=True)
    futures = [submit(batcher, k) for k in (1, 2, 3, 4, 5, 6)]  # three full batches, queued while
    engine.gate.set()  # the first one is being started
    assert [float(f.result(5)[0]) for f in futures] == [1, 2, 3, 4, 5, 6]
    assert engine.log == [("start", 1), ("start", 3), ("wait", 1), ("start", 5), ("wait", 3), ("wait", 5)]
    engine.log.clear()
    assert float(submit(batcher, 7).result(5)[0]) == 7, "alone, a batch is answered without waiting for company"
    assert engine.log == [("start", 7), ("wait", 7)]
    failing_start, failing_wait, fine = (
        batcher.submit(np.full((2, 2, 2, 3), k, np.int64), np.zeros((2, 25), np.float32)) for k in (-1, -2, 8)
    )
    with pytest.raises(RuntimeError, match="could not queue"):
        failing_start.result(5)
    with pytest.raises(RuntimeError, match="failed on the device"):
        failing_wait.result(5)
    assert fine.result(5).shape == (2, 4)
    last = [submit(batcher, k) for k in (9, 10, 11)]
    batcher.close(timeout=5)
    assert [float(f.result(0)[0]) for f in last] == [9, 10, 11], "close answers the batches in flight"
    stats = batcher.stats()
    assert stats.completed == 11 and stats.failed == 2 and stats.requests == 13


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
        ({"max_batch": 4, "max_delay_ms": -1}, "max_delay_ms"),
        ({"max_batch": 4, "queue_size": 2}, "must hold at least one full batch"),
    ],
)
def test_bad_batcher_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(FakeEngine(), **kwargs)


def test_recognizer_submit_from_many_threads_matches_direct_calls(tiny_bundle):
    faces, masks = seeded_faces(48, seed=77), occlusion_mix(48, seed=77)
    with Recognizer.open(tiny_bundle, max_batch=8, max_delay_ms=2.0, queue_size=64) as recognizer:
        expected = np.stack([recognizer.embed(faces[i], masks[i])[0] for i in range(48)])
        got: dict[int, np.ndarray] = {}

        def client(indices: range) -> None:
            futures = {i: recognizer.submit(faces[i], masks[i]) for i in indices}
            got.update({i: f.result(30) for i, f in futures.items()})

        threads = [threading.Thread(target=client, args=(range(t, 48, 6),)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batch = recognizer.submit(faces[:3], masks[:3]).result(30)
        stats = recognizer.stats(reset=True)
        assert recognizer.stats().requests == 0
    assert sorted(got) == list(range(48)) and got[0].shape == (expected.shape[1],)
    np.testing.assert_allclose(np.stack([got[i] for i in range(48)]), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch, expected[:3], rtol=1e-4, atol=1e-4)
    assert stats.requests == 97 and stats.completed == 97 and stats.queue_wait_ms["p50"] >= 0


def test_recognizer_requests_larger_than_max_batch(tiny_bundle):
    faces = seeded_faces(7, seed=5)
    with Recognizer.open(tiny_bundle, max_batch=3) as recognizer:
        with pytest.raises(ValueError, match="1..max_batch \\(3\\) faces, got 7"):
            recognizer.submit(faces)
        assert recognizer.embed(faces).shape[0] == 7
    with pytest.raises(BatcherClosedError):
        recognizer.submit(faces[0])
    with pytest.raises(ValueError, match="queue_size"):
        Recognizer.open(tiny_bundle, max_batch=8, queue_size=4)
