"""Routes answered before FastAPI's router, for the requests that carry the load.

FastAPI's layers, routing and dependency injection cost about as much CPU per request as the rest
of a small inference request together: CPU the model's threads need on a small machine. A route
given here is a Starlette ``Route`` (for its path matching) whose endpoint, an async function of
the request that returns the response, is called here directly. It sits inside the access, API-key
and body-limit middleware, so its requests are logged, counted, authenticated and size-checked like
every other, and an error it raises on purpose is answered as FastAPI's handlers answer it
(``error_answer``). Everything it does not match goes on to the app.

The face API's busy routes stay declared on FastAPI, which documents them; ``served_ahead`` serves
the same endpoints here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pdsn.serve.errors import error_answer
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
                    await _answer(route, scope, receive, send)
                    return
                allowed = ", ".join(sorted(route.methods or ()))
                message = f"{scope['method']} is not allowed on {route.path}; send {allowed}"
                await refuse(scope, receive, send, 405, message, {"Allow": allowed})
                return
        await self.app(scope, receive, send)


def served_ahead(routes: Iterable[BaseRoute], paths: Collection[str]) -> list[Route]:
    """Starlette routes with the endpoints of the FastAPI routes at ``paths`` (each takes the request)."""
    chosen = [route for route in routes if isinstance(route, APIRoute) and route.path in paths]
    missing = set(paths) - {route.path for route in chosen}
    if missing:
        raise ValueError(f"no FastAPI route at {sorted(missing)} to serve ahead of the router")
    return [Route(r.path, r.endpoint, methods=sorted(r.methods or ()), name=r.name) for r in chosen]


async def _answer(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoint's response, or the one ``error_answer`` gives for what it raised; an exception it does not
    know (a bug), or one raised while sending, goes on to the access middleware's 500."""
    request = Request(scope, receive)
    try:
        response = await route.endpoint(request)
    except Exception as exc:
        response = error_answer(request, exc)
        if response is None:
            raise
    await response(scope, receive, send)
