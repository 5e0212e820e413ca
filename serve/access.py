"""Every request gets an id, a JSON access-log line, its metrics, and a bare 500 if a bug escapes a route.

The id is the client's ``X-Request-Id`` when it is a short token, else a new one; it is returned in
the ``X-Request-Id`` header and in every error body. An unexpected exception is logged with its
traceback and the id; the client gets only the id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdsn.serve.metrics import ServeMetrics

access_logger = logging.getLogger("pdsn.serve.access")
logger = logging.getLogger("pdsn.serve")
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED = "unmatched"


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

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if answer["started"]:
                raise
            body = {"error": f"internal error; the server log has the details under request id {request_id}"}
            await JSONResponse({**body, "request_id": request_id}, 500)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = self._route(scope)
            self.metrics.observe(route, scope["method"], answer["status"], seconds)
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info(_line(scope, route, answer["status"], seconds, request_id))

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
    return uuid.uuid4().hex


def _line(scope: Scope, route: str, status: int, seconds: float, request_id: str) -> str:
    client = scope.get("client")
    return json.dumps(
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": request_id,
            "method": scope["method"],
            "route": route,
            "path": scope["path"],
            "status": status,
            "ms": round(seconds * 1000.0, 3),
            "client": client[0] if client else None,
        }
    )
