"""Routes answered before FastAPI's router, for the requests that carry the load.

FastAPI's routing and dependency injection cost about as much CPU per request as the rest of a
small inference request together: CPU the model's threads need on a small machine. A route given
here is a plain Starlette ``Route`` with an ASGI endpoint. It sits inside the access, API-key and
body-limit middleware, so its requests are logged, counted, authenticated and size-checked like
every other; everything it does not match goes on to the app.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pdsn.serve.limits import refuse


class FastRoutes:
    """Answer ``routes`` here; a matching path with another method is a 405 naming the allowed ones."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.NONE:
                    continue
                scope.update(child, route=route)
                if match is Match.FULL:
                    await route.handle(scope, receive, send)
                    return
                allowed = ", ".join(sorted(route.methods or ()))
                message = f"{scope['method']} is not allowed on {route.path}; send {allowed}"
                await refuse(scope, receive, send, 405, message, {"Allow": allowed})
                return
        await self.app(scope, receive, send)
