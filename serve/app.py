"""The ASGI app: one ``ServeState`` (recognizer, gallery, thread pool), the face API, KServe v2 and metrics.

The service's own middleware wraps the FastAPI app from outside: access log and metrics, the Host and
Origin checks (``pdsn.serve.origins``), API keys, the body limit, then the routes that carry the load (``FastRoutes``: KServe inference, embed, verify,
identify), so their requests pass through none of FastAPI's own layers; every other request goes on
to FastAPI.

Loading runs in the background once the server starts, so ``/v2/health/live`` answers at once and
``/v2/health/ready`` turns 200 only after the bundle and gallery are loaded and a warm-up batch ran.
At shutdown (after the server has answered every request it accepted) the gallery and the
recognizer are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Response
from starlette.types import ASGIApp

from pdsn.serve.access import AccessMiddleware
from pdsn.serve.config import ServeConfig
from pdsn.serve.errors import install_error_handlers
from pdsn.serve.face_api import BUSY_FACE_ROUTES, FaceApi, face_router
from pdsn.serve.fast_routes import FastRoutes, served_ahead
from pdsn.serve.kserve import kserve_router
from pdsn.serve.kserve_infer import infer_openapi, infer_routes
from pdsn.serve.limits import ApiKeyMiddleware, BodyLimitMiddleware
from pdsn.serve.metrics import ServeMetrics
from pdsn.serve.origins import HostOriginMiddleware
from pdsn.serve.state import ServeState

logger = logging.getLogger("pdsn.serve")
DOCS_ASSETS = "/docs/assets"


def create_app(config: ServeConfig, on_load_failure: Callable[[BaseException], None] | None = None) -> ASGIApp:
    """The service for ``config``. ``on_load_failure`` is told if the bundle or gallery cannot be opened
    (``pdsn serve`` then stops the server); without it the server stays up, not ready, saying why."""
    state = ServeState(config)
    metrics = ServeMetrics(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().run_in_executor(None, state.load)
        loading.add_done_callback(lambda done: _loaded(state, done, on_load_failure))
        try:
            yield
        finally:
            await asyncio.wait([loading])
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(
        title="pdsn serve",
        summary="Occlusion-robust face recognition (PDSN): face API, KServe v2 inference protocol, metrics",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _serve_docs(app)
    face = face_router(FaceApi(state))
    routers = [face, kserve_router(state)]
    for router in routers:
        app.include_router(router)

    @app.get("/metrics", summary="Prometheus metrics", tags=["operations"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    install_error_handlers(app)
    fast = [*infer_routes(state), *served_ahead(face.routes, BUSY_FACE_ROUTES)]
    _document(app, infer_openapi())
    service: ASGIApp = FastRoutes(app, routes=fast)
    service = BodyLimitMiddleware(service, max_bytes=config.max_body_bytes, in_flight=state)
    if config.api_keys:
        service = ApiKeyMiddleware(service, keys=config.api_keys)
    service = HostOriginMiddleware(service, hosts=config.allowed_hosts, origins=config.allowed_origins)
    routes = [
        *fast,
        *(r for router in routers for r in router.routes),
        *(r for r in app.router.routes if hasattr(r, "path")),
    ]
    return AccessMiddleware(service, metrics=metrics, routes=routes)


def _serve_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its script and styles served from the package (``swagger-ui-bundle``), so the
    page works where no CDN can be reached."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("/docs shows the app's OpenAPI spec: create the app with an openapi_url")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def _document(app: FastAPI, paths: dict) -> None:
    """Add ``paths`` (routes served ahead of FastAPI's router) to the app's OpenAPI spec."""
    spec = app.openapi

    def openapi() -> dict:
        schema = app.openapi_schema
        if schema is None:
            schema = spec()
            schema["paths"].update(paths)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _loaded(state: ServeState, done: asyncio.Future, on_failure: Callable[[BaseException], None] | None) -> None:
    exc = None if done.cancelled() else done.exception()
    if exc is None:
        return
    state.failed(exc)
    logger.error("pdsn serve: could not load: %s", exc)
    if on_failure is not None:
        on_failure(exc)
