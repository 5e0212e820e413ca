"""Limits applied before a route runs: API keys (401) and the request body's size (413).

Both are plain ASGI middleware, so a refused request costs no routing, parsing or body read (the
key is checked before the body is read). Keys are compared in constant time.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Callable
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsn.serve.errors import RETRY_AFTER_S, ApiError

# Routes that need no API key: the health checks (probes carry no secrets) and the API's description.
KEY_EXEMPT = ("/v2/health/", "/docs", "/openapi.json")
KEY_EXEMPT_SUFFIX = "/ready"


def load_api_keys(path: str | Path) -> tuple[str, ...]:
    """The keys in ``path``: one per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--api-key-file: no such file {str(path)!r}")
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if any(c.isspace() for c in key) or not key.isascii():
            raise ValueError(f"{path}:{number}: an API key must be printable ASCII without spaces; one key per line")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path} holds no API keys; write one key per line (lines starting with # are skipped)")
    return tuple(keys)


def key_exempt(path: str) -> bool:
    return path.startswith(KEY_EXEMPT) or (path.startswith("/v2/models/") and path.endswith(KEY_EXEMPT_SUFFIX))


class ApiKeyMiddleware:
    """401 unless the request carries one of ``keys`` as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], exempt: Callable[[str], bool] = key_exempt) -> None:
        self.app = app
        self.keys = tuple(key.encode("ascii") for key in keys)
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _presented_key(scope)
        if given is None:
            message = "missing API key; send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        elif not self._known(given):
            message = "the API key is not accepted; check the key the server was given (--api-key-file)"
        else:
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": 'Bearer realm="pdsn"'}
        await refuse(scope, receive, send, 401, message, headers)

    def _known(self, given: bytes) -> bool:
        # Every key is compared, so the time taken says nothing about which (if any) matched.
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(given, key)
        return found


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: from Content-Length at once, else while it streams in.

    The body is read here, at most ``max_bytes`` of it, and handed on whole. ``in_flight`` (the server's
    state) counts the requests being answered: only once their body has arrived, so a slow uploader is
    not counted as work.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, in_flight=None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message, receive), send)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        if self.in_flight is None:
            await self.app(scope, _replay(body, receive), send)
            return
        self.in_flight.requests_in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight.requests_in_flight -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, declared: int | None) -> None:
        size = f"{declared:,} bytes" if declared is not None else "more bytes"
        message = (
            f"request body of {size} is over this server's limit of {self.max_bytes:,} bytes; send fewer or "
            f"smaller images per request (the server's --max-body-bytes)"
        )
        await refuse(scope, receive, send, 413, message, {"Connection": "close"})


async def refuse(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, headers: dict, field: str | None = None
) -> None:
    """Answer from a middleware, with the error body every route uses (``field``: the input at fault)."""
    body = {"error": message, "request_id": scope.get("state", {}).get("request_id", "")}
    if field is not None:
        body["field"] = field
    await JSONResponse(body, status, headers=headers)(scope, receive, send)


def _presented_key(scope: Scope) -> bytes | None:
    authorization = header_value(scope, b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip().encode("latin-1")
    key = header_value(scope, b"x-api-key")
    return key.strip().encode("latin-1") if key and key.strip() else None


def header_value(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _replay(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that gives ``first`` once, then passes on to the real one (e.g. a disconnect)."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class PixelBudget:
    """The decoded pixels all requests in flight may hold at once: a request takes its images' share (read
    from their headers) before decoding and gives it back once its faces are aligned; one that does not fit
    now is a 503 with Retry-After rather than a wait, so memory stays bounded whatever arrives."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.held = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, pixels: int, field: str):
        with self._lock:
            if self.held + pixels > self.pixels:
                raise ApiError(
                    503,
                    f"{field}: the server is decoding {self.held:,} pixels of other requests' images and these "
                    f"{pixels:,} would pass its budget of {self.pixels:,} (--max-pixels-in-flight); retry shortly",
                    field,
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.held += pixels
        try:
            yield
        finally:
            with self._lock:
                self.held -= pixels
