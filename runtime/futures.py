"""Futures over futures: one request's chunks as one result, and a result mapped once it is ready.

The runtime's operations return ``concurrent.futures.Future`` so that threads wait with ``result()``
and the service awaits them (``asyncio.wrap_future``). Cancelling a future made here cancels the
parts still queued, so a caller that gives up frees the batcher of its work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

import numpy as np

U = TypeVar("U")


def joined(parts: list[Future]) -> Future:
    """The parts' (n_i, ...) arrays concatenated in order, or the first part's error."""
    if len(parts) == 1:
        return parts[0]
    whole: Future = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def part_done(part: Future) -> None:
        if part.cancelled() or part.exception() is not None:
            _settle(whole, part)
            return
        with lock:
            left[0] -= 1
            finished = left[0] == 0
        if finished:
            _resolve(whole, lambda: np.concatenate([np.atleast_2d(p.result()) for p in parts]))

    _cancels_parts(whole, parts)
    for part in parts:
        part.add_done_callback(part_done)
    return whole


def then(future: Future, call: Callable[[Any], U]) -> Future:
    """A future of ``call(result)`` once ``future`` has its result (its error or cancellation otherwise)."""
    mapped: Future = Future()

    def done(source: Future) -> None:
        if source.cancelled() or source.exception() is not None:
            _settle(mapped, source)
        else:
            _resolve(mapped, lambda: call(source.result()))

    _cancels_parts(mapped, [future])
    future.add_done_callback(done)
    return mapped


def _settle(target: Future, failed: Future) -> None:
    """``target`` cancelled or failed as ``failed`` was, unless it is settled already."""
    if target.done():
        return
    if failed.cancelled():
        target.cancel()
    else:
        _set(target, exception=failed.exception())


def _resolve(target: Future, compute: Callable[[], Any]) -> None:
    try:
        value = compute()
    except BaseException as exc:  # the caller's to see, as the part's own error would be
        _set(target, exception=exc)
    else:
        _set(target, result=value)


def _set(target: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Settle ``target`` unless it is settled already (cancelled by its caller, or failed by another part)."""
    try:
        if exception is not None:
            target.set_exception(exception)
        else:
            target.set_result(result)
    except InvalidStateError:
        return


def _cancels_parts(whole: Future, parts: list[Future]) -> None:
    def cancelled(future: Future) -> None:
        if future.cancelled():
            for part in parts:
                part.cancel()

    whole.add_done_callback(cancelled)
