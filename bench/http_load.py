"""Closed-loop HTTP/1.1 clients that cost the server's machine as little as possible.

A benchmark whose clients share the server's cores measures the clients too: threads running
Python's ``http.client`` spend several times the CPU per request of the server's own HTTP layer,
and take turns on one interpreter lock, so eight of them answer a finished batch one after another.
Here every client is one keep-alive connection on one event loop (uvloop where installed), its
requests are bytes built before the window, and responses are parsed by ``httptools`` (uvicorn's
own C parser), as the C load generators (wrk, h2load) the field uses keep their own cost small.
``pdsn bench-serve`` reports the clients' CPU per request beside the server's.

Each client sends one request, waits for the whole answer, records (sent, answered) in
``perf_counter`` seconds, and sends the next.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

# How long the clients' last requests may take once the window has ended.
ANSWER_TIMEOUT_S = 60.0


def raw_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete ``POST`` request for ``path`` with ``body``, ready to write to a keep-alive connection."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ClosedLoopClient(asyncio.Protocol):
    """One connection: request ``requests[k]``, await its answer, then ``requests[k + stride]``, until ``stop``."""

    def __init__(self, requests: Sequence[bytes], first: int, stride: int, stop: threading.Event) -> None:
        import httptools

        self.requests, self.next, self.stride, self.stop = requests, first, stride, stop
        self.parser = httptools.HttpResponseParser(self)
        self.records: list[tuple[float, float]] = []
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError: the server's answer is not HTTP/1.1
            self._finish(RuntimeError(f"the server's answer could not be parsed: {exc}"))

    def on_message_complete(self) -> None:
        answered = time.perf_counter()
        status = self.parser.get_status_code()
        if status != 200:
            self._finish(RuntimeError(f"the server answered {status}"))
            return
        self.records.append((self.sent, answered))
        if self.stop.is_set():
            self._finish(None)
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"the server closed the connection ({exc or 'no error given'})"))

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.requests[self.next % len(self.requests)])
        self.next += self.stride

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)
        self.transport.close()


def run_closed_loop(
    port: int,
    requests: Sequence[tuple[str, bytes, dict[str, str]]],
    clients: int,
    window: Callable[[], None],
) -> list[tuple[float, float]]:
    """``clients`` connections to 127.0.0.1:``port`` cycling through ``requests`` (path, body, headers)
    while ``window()`` runs on a thread (it sleeps through the warm-up and the measured window);
    every client's (sent, answered) times."""
    host = f"127.0.0.1:{port}"
    encoded = [raw_request(host, path, body, headers) for path, body, headers in requests]

    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        connections: list[ClosedLoopClient] = []
        window_done = None
        try:
            for index in range(clients):
                _, protocol = await loop.create_connection(
                    lambda index=index: ClosedLoopClient(encoded, index, clients, stop), "127.0.0.1", port
                )
                connections.append(protocol)
            window_done = asyncio.ensure_future(asyncio.to_thread(window))
            # Until the window ends, or a client fails (a client's future is done only then).
            await asyncio.wait([window_done, *(c.done for c in connections)], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            if connections:
                await asyncio.wait([c.done for c in connections], timeout=ANSWER_TIMEOUT_S)
        errors = [c.done.exception() for c in connections if c.done.done()]
        if any(errors):
            raise next(error for error in errors if error is not None)
        waiting = sum(not c.done.done() for c in connections)
        if waiting:
            raise RuntimeError(f"{waiting} client(s) still had no answer {ANSWER_TIMEOUT_S:g} s after the window")
        await window_done
        return [record for connection in connections for record in connection.records]

    return _event_loop_run(main)


def _event_loop_run(main: Callable) -> list[tuple[float, float]]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
