"""uvicorn's own cost per request: an ASGI app that reads the request and answers at once.

``pdsn bench-serve`` serves it with uvicorn (the same loop and HTTP parser ``pdsn serve`` picks)
and drives it with the same clients and requests as the service, so the service's figures can be
read beside what the HTTP server alone takes. It answers ``FLOOR_ANSWER_BYTES``, about the size of
one embedding in a binary KServe v2 answer. It imports nothing, so uvicorn loads it as
``pdsn.bench.http_floor:app``.
"""

from __future__ import annotations

FLOOR_ANSWER_BYTES = 2_200
_ANSWER = b"0" * FLOOR_ANSWER_BYTES
_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", str(FLOOR_ANSWER_BYTES).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})
