"""Every request gets an id, a JSON access-log line, its metrics, and a bare 500 if a bug escapes a route.

The id is the client's ``X-Request-Id`` when it is a short token, else a new one (random per process,
then a count); it is returned in the ``X-Request-Id`` header and in every error body. An unexpected
exception is logged with its traceback and the id; the client gets only the id. The access-log line
is formatted when a handler writes it (``pdsn serve``'s writes on its own thread), not on the event loop.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from datetime import datetime, timezone

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsn.serve.errors import internal_error
from pdsn.serve.metrics import ServeMetrics

access_logger = logging.getLogger("pdsn.serve.access")
logger = logging.getLogger("pdsn.serve")
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED = "unmatched"
CLIENT_GONE = 499  # the status metrics and the access log give a request whose client went away
_ID_PREFIX = secrets.token_hex(8)
_id_count = itertools.count()


class AccessMiddleware:
    """The outermost middleware: request id, timing, metrics, access log, last-resort 500."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # every route with its full path, to name those refused before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {}).update(request_id=request_id, started=started)
        answer = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # gone before its body arrived (or cut for being slow): nobody to answer
            answer["status"] = CLIENT_GONE
            logger.info("request %s (%s %s): the client went away", request_id, scope["method"], scope["path"])
        except Exception:
            logger.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if not answer["started"]:  # else it was answered already (FastAPI's own 500 handler re-raises)
                await JSONResponse(internal_error(request_id), 500)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = self._route(scope)
            self.metrics.observe(route, scope["method"], answer["status"], seconds)
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info("%s", AccessLine(scope, route, answer["status"], seconds, request_id))

    def _route(self, scope: Scope) -> str:
        """The route template; for a request refused before routing (401, 413), the route it would have had."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", UNMATCHED)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_ID.match(value):
            return value.decode()
    return f"{_ID_PREFIX}{next(_id_count):016x}"


class AccessLine:
    """One request's access-log line; its JSON is made when a handler formats the record."""

    __slots__ = ("at", "client", "method", "ms", "path", "request_id", "route", "status")

    def __init__(self, scope: Scope, route: str, status: int, seconds: float, request_id: str) -> None:
        client = scope.get("client")
        self.at, self.request_id, self.method, self.route = time.time(), request_id, scope["method"], route
        self.path, self.status, self.ms = scope["path"], status, round(seconds * 1000.0, 3)
        self.client = client[0] if client else None

    def __str__(self) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(self.at, timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": self.request_id,
                "method": self.method,
                "route": self.route,
                "path": self.path,
                "status": self.status,
                "ms": self.ms,
                "client": self.client,
            }
        )
