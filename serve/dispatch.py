"""Handing work to the runtime without blocking the event loop: the runtime's futures are awaited, CPU work
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
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
from fastapi import Request

from pdsn.model.occlusion import Occlusion
from pdsn.runtime import DeadlineExceededError, Recognizer
from pdsn.runtime.face_finder import Located
from pdsn.runtime.verification import PairScore
from pdsn.serve.config import MAX_DEADLINE_MS
from pdsn.serve.errors import ApiError

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
    recognizer: Recognizer, faces: Located, occlusion: Sequence[Occlusion], deadline: Deadline
) -> np.ndarray:
    """(N, E) embeddings of located faces under their occlusion (``Recognizer.submit_faces``)."""
    admit(recognizer, len(faces))
    return await awaited(recognizer.submit_faces(faces, occlusion, deadline.remaining()), deadline)


async def features(recognizer: Recognizer, faces: Located, deadline: Deadline) -> np.ndarray:
    """(N, F) trunk features of located faces, for the gallery (``Recognizer.submit_faces_features``)."""
    admit(recognizer, len(faces))
    return await awaited(recognizer.submit_faces_features(faces, deadline.remaining()), deadline)


async def verification(
    recognizer: Recognizer, face_a: Located, face_b: Located, occlusion: tuple[Occlusion, Occlusion], deadline: Deadline
) -> PairScore:
    """Two located faces compared under the union of their occlusion (``Recognizer.submit_verification``)."""
    admit(recognizer, 2)
    return await awaited(recognizer.submit_verification(face_a, face_b, *occlusion, deadline.remaining()), deadline)


def admit(recognizer: Recognizer, faces: int) -> None:
    """413 for a request of more faces than the queue ever holds; the runtime admits the rest whole or answers
    ``QueueFullError`` (429) when it cannot take them all now."""
    if faces > recognizer.queue_size:
        raise ApiError(
            413,
            f"this request holds {faces} faces, more than this server's queue ever holds ({recognizer.queue_size}, "
            f"its --queue-size); send at most {recognizer.queue_size} faces per request",
            "images",
        )


async def awaited(future: Future, deadline: Deadline) -> Any:
    """A runtime operation's result, or ``DeadlineExceededError`` (504) once the deadline passes; a request given
    up on is cancelled, so its faces still queued are not run."""
    waiting = asyncio.wrap_future(future)
    try:
        left = deadline.remaining()
        return await (waiting if left is None else asyncio.wait_for(waiting, left))
    except TimeoutError:
        future.cancel()
        raise DeadlineExceededError("the request's deadline passed while its faces were queued or running") from None
    except BaseException:
        future.cancel()
        raise
