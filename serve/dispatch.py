"""Handing work to the runtime without blocking the event loop: the batcher's futures are awaited, CPU work
goes to a thread pool, and every wait is bounded by the request's deadline.

A deadline counts from the request's arrival: ``X-Deadline-Ms`` or the server's default. The batcher
drops a request still queued when it passes (``DeadlineExceededError``); a request whose batch is
running when it passes is answered 504 as well, and its result discarded.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
from fastapi import Request

from pdsn.runtime import DeadlineExceededError, Recognizer
from pdsn.serve.config import MAX_DEADLINE_MS
from pdsn.serve.errors import ApiError, input_errors

DEADLINE_HEADER = "x-deadline-ms"


class Deadline:
    """When a request must be answered by (``perf_counter`` seconds), or None for no limit."""

    def __init__(self, expires: float | None) -> None:
        self.expires = expires

    @classmethod
    def of(cls, request: Request, default_ms: float | None) -> Deadline:
        """From the ``X-Deadline-Ms`` header, else ``default_ms``, counted from the request's arrival."""
        started = getattr(request.state, "started", None) or time.perf_counter()
        text = request.headers.get(DEADLINE_HEADER)
        milliseconds = default_ms if text is None else _milliseconds(text)
        return cls(None if milliseconds is None else started + milliseconds / 1000.0)

    def tightened(self, seconds: float | None) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        if seconds is None:
            return self
        other = time.perf_counter() + seconds
        return Deadline(other if self.expires is None else min(self.expires, other))

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline); ``DeadlineExceededError`` once it has passed."""
        if self.expires is None:
            return None
        left = self.expires - time.perf_counter()
        if left <= 0:
            raise DeadlineExceededError("the request's deadline passed before its faces were queued")
        return left


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_MS):
        raise ApiError(
            422,
            f"X-Deadline-Ms: expected milliseconds in (0, {MAX_DEADLINE_MS:g}], got {text!r}",
            "X-Deadline-Ms",
        )
    return value


async def in_pool(pool: Executor, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call`` on the server's thread pool (decoding, alignment, gallery search and commits)."""
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(call, *args, **kwargs))


async def embeddings(
    recognizer: Recognizer, batch: np.ndarray, occlusion: np.ndarray | str, deadline: Deadline, field: str = "occlusion"
) -> np.ndarray:
    """(N, E) embeddings of a prepared batch, in requests of at most ``max_batch`` faces.

    ``occlusion``: (N, 25) vectors, or ``"auto"``, passed to the runtime as is.
    """
    admit(recognizer, len(batch), features=False)
    futures = []
    try:
        for start in range(0, len(batch), recognizer.max_batch):
            part = slice(start, start + recognizer.max_batch)
            masks = occlusion if isinstance(occlusion, str) else occlusion[part]
            with input_errors(field):
                futures.append(recognizer.submit(batch[part], masks, deadline=deadline.remaining()))
    except BaseException:
        _cancel(futures)
        raise
    return await _gathered(futures, deadline)


async def features(recognizer: Recognizer, batch: np.ndarray, deadline: Deadline) -> np.ndarray:
    """(N, F) trunk features of a prepared batch (for the gallery), in requests of at most ``max_batch`` faces."""
    admit(recognizer, len(batch), features=True)
    futures = []
    try:
        for start in range(0, len(batch), recognizer.max_batch):
            chunk = batch[start : start + recognizer.max_batch]
            futures.append(recognizer.submit_features(chunk, deadline=deadline.remaining()))
    except BaseException:
        _cancel(futures)
        raise
    return await _gathered(futures, deadline)


def admit(recognizer: Recognizer, faces: int, features: bool) -> None:
    """Admit a request's faces whole or not at all: 413 for more than the queue can ever hold, 429 (the
    batcher's ``QueueFullError``) when it cannot take them all now. Its chunks are then submitted without
    a pause, and the batcher's worker only frees room meanwhile, so every chunk fits."""
    if faces > recognizer.queue_size:
        raise ApiError(
            413,
            f"this request holds {faces} faces, more than this server's queue ever holds ({recognizer.queue_size}, "
            f"its --queue-size); send at most {recognizer.queue_size} faces per request",
            "images",
        )
    recognizer.check_room(faces, features)


async def _gathered(futures: list[Future], deadline: Deadline) -> np.ndarray:
    waiting = [asyncio.wrap_future(future) for future in futures]
    joined = waiting[0] if len(waiting) == 1 else asyncio.gather(*waiting)
    try:
        left = deadline.remaining()
        results = await (joined if left is None else asyncio.wait_for(joined, left))
    except DeadlineExceededError:
        _cancel(futures)
        raise
    except TimeoutError:
        _cancel(futures)
        raise DeadlineExceededError("the request's deadline passed while its faces were queued or running") from None
    except BaseException:
        _cancel(futures)
        raise
    if len(waiting) == 1:
        return np.atleast_2d(results)
    return np.concatenate([np.atleast_2d(r) for r in results])


def _cancel(futures: list[Future]) -> None:
    for future in futures:
        future.cancel()
