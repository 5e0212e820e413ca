"""The access log's writer: lines queued as records, formatted and written on a thread of their own, bounded.

``pdsn serve`` writes one JSON line per request to stdout. The writing happens off the event loop, so a
slow reader never stalls requests; the queue is bounded, so a reader that never reads (an unread pipe)
costs at most ``capacity`` records of memory, the rest dropped and counted; and stopping does not wait
for a writer blocked on such a reader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from logging.handlers import QueueHandler, QueueListener

ACCESS_LOGGER = "pdsn.serve.access"
DEFAULT_CAPACITY = 10_000


def access_log_dropped() -> int:
    """Access-log lines dropped so far by the bounded handlers of ``pdsn.serve.access``."""
    return sum(getattr(handler, "dropped", 0) for handler in logging.getLogger(ACCESS_LOGGER).handlers)


class BoundedAccessLog:
    """The access log's queue and writer thread (see the module docstring).

    ``fd``: the file descriptor the lines go to, written with plain ``os.write`` calls, so a writer blocked
    on a reader that never reads holds no lock that the process's exit would wait for. At most ``capacity``
    lines wait in the queue; a line that finds it full is dropped and counted (``dropped``, and
    ``pdsn_access_log_dropped_total``). ``stop`` waits at most ``timeout`` seconds for the writer.
    """

    def __init__(self, fd: int, capacity: int = DEFAULT_CAPACITY, timeout: float = 2.0) -> None:
        self.queue: queue.Queue = queue.Queue(capacity)
        self.handler = _DroppingQueueHandler(self.queue)
        writer = _LineWriter(fd, self.handler)
        self.listener = QueueListener(self.queue, writer)  # type: ignore[arg-type]  # typeshed: a Handler; duck-typed
        self.timeout = timeout

    @property
    def dropped(self) -> int:
        return self.handler.dropped

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self.listener.enqueue_sentinel()
        thread = self.listener._thread
        if thread is not None:
            thread.join(self.timeout)  # a daemon thread: one still blocked on its write ends with the process
        self.listener._thread = None


class _DroppingQueueHandler(QueueHandler):
    """Queues the record as it is (the writer's thread formats it, the access line's JSON included); a record
    that finds the queue full is dropped and counted."""

    def __init__(self, records: queue.Queue) -> None:
        super().__init__(records)
        self.dropped = 0
        self._count = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.count_dropped()

    def count_dropped(self) -> None:
        with self._count:
            self.dropped += 1


class _LineWriter:
    """The listener's one handler: each record's message as a line, written straight to ``fd``; a line the
    reader has gone away for (a closed pipe) is counted as dropped."""

    level = logging.NOTSET

    def __init__(self, fd: int, counter: _DroppingQueueHandler) -> None:
        self.fd = fd
        self.counter = counter

    def handle(self, record: logging.LogRecord) -> None:
        data = memoryview(f"{record.getMessage()}\n".encode("utf-8", "backslashreplace"))
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.counter.count_dropped()
