"""Slow and idle clients: uvicorn's HTTP protocol with deadlines on reading a request and a bound on its headers.

uvicorn itself waits for a request's headers and body for as long as a client takes, keeps a connection
that never sends a request open forever, and reads headers of any size: a few slow clients hold sockets,
memory and SIGTERM's drain. This protocol (httptools, as uvicorn's default) adds:

- **headers**: a connection must deliver a request's headers within ``header_timeout_s`` of opening (or
  of the last response): the same deadline closes idle connections. Otherwise 408 and close.
- **body**: each chunk of a request's body must arrive within ``body_timeout_s`` of the last one; the
  handler waiting for it sees the client as gone, and the connection is closed.
- **header size**: at most ``max_header_bytes`` of request line and headers; more is a 431 and close.
- **shutdown**: at SIGTERM a request still uploading its body is cut at once, like a late body.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the server refuses."""


def guarded_protocol(
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) with these limits."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._refusal: tuple[int, str] | None = None
            self._header_bytes = 0
            self._deadline: asyncio.TimerHandle | None = None
            self._arm(header_timeout_s, self._headers_late)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._deadline is None:
                self._arm(header_timeout_s, self._headers_late)

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            if self.cycle is not None and self.cycle.more_body:
                self._arm(body_timeout_s, self._body_late)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm(body_timeout_s, self._body_late)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the next request
            if not self.transport.is_closing():
                self._arm(header_timeout_s, self._headers_late)

        def shutdown(self) -> None:
            """At SIGTERM: a request still uploading its body is cut now (it could not be answered within the
            drain anyway); the others finish as uvicorn lets them."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and cycle.more_body:
                self._cut(cycle)
                return
            super().shutdown()

        def send_400_response(self, msg: str) -> None:
            if self._refusal is None:
                super().send_400_response(msg)
            else:
                self._answer(*self._refusal)

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes:
                self._refusal = (431, f"request headers over {max_header_bytes:,} bytes")
                raise _Refused  # the parser stops; uvicorn answers through send_400_response

        def _headers_late(self) -> None:
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:
                self._answer(408, f"no complete request headers within {header_timeout_s:g} s")

        def _body_late(self) -> None:
            self._deadline = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                self._cut(cycle)

        def _cut(self, cycle) -> None:
            cycle.disconnected = True  # the handler waiting for the body sees the client gone
            cycle.message_event.set()
            self.transport.close()

        def _answer(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            body = message.encode("ascii")
            head = (
                f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Request Header Fields Too Large'}\r\n"
                f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode("ascii") + body)
            self.transport.close()

        def _arm(self, seconds: float, handler) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, handler)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    return GuardedHttpToolsProtocol
