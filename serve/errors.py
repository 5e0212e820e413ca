"""Errors as HTTP answers: bad input is a 4xx naming the field, load is 429/503/504, a bug is a bare 500.

Every error body is ``{"error": message, "request_id": id}``, plus ``"field"`` when one input is to
blame. Runtime checks raise ``ValueError``/``TypeError`` whose message starts with the argument it
was given (``images[1]: ...``); handlers pass the API's own field names as those arguments, so the
runtime's message names the field the client sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pdsn.errors import InputError, PdsnError
from pdsn.runtime import BatcherClosedError, DeadlineExceededError, QueueFullError
from pdsn.runtime.gallery import DuplicateIdentityError, GalleryError, PatternBusyError, UnknownIdentityError

# Seconds a client should wait before retrying after a 429 or 503.
RETRY_AFTER_S = 1
_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\[[^\]]*\])*)")
_LOCATIONS = {"body", "query", "path", "header"}
logger = logging.getLogger("pdsn.serve")


class ApiError(PdsnError):
    """An answer other than 2xx that the client can act on; ``field`` names the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def not_ready(reason: str) -> ApiError:
    return ApiError(503, f"not ready: {reason}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})


@contextmanager
def input_errors(*fields: str, status: int = 422) -> Iterator[None]:
    """Turn the runtime's input checks (ValueError, TypeError) raised inside into a 4xx naming the field.

    The field is an ``InputError``'s own ``field`` (else the message's leading name) when it is one of
    ``fields`` or an item of one (``images[1]``), else the first of ``fields``.
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if isinstance(exc, InputError):
            leading = exc.field
        else:  # a check not typed yet: its message starts with the argument's name
            match = _FIELD.match(message)
            leading = match.group(1) if match else ""
        named = next((leading for field in fields if leading.startswith(field)), fields[0])
        raise ApiError(status, message if message.startswith(named) else f"{named}: {message}", named) from None


@contextmanager
def identity_errors(identity: str) -> Iterator[None]:
    """404 for an identity not enrolled, 409 for one enrolled already (without the gallery's file path)."""
    try:
        yield
    except UnknownIdentityError:
        raise ApiError(404, f"identity {identity!r} is not enrolled", "identity") from None
    except DuplicateIdentityError:
        raise ApiError(
            409, f'identity {identity!r} is already enrolled; send "replace": true to replace its faces', "identity"
        ) from None


def error_response(
    request: Request, status: int, message: str, field: str | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    body = {"error": message, "request_id": request_id(request), **extra}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status, headers=headers)


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


def field_name(location: tuple) -> str:
    """A pydantic error location as the client wrote it: ``("body", "images", 1)`` -> ``images[1]``."""
    parts = list(location[1:] if location and location[0] in _LOCATIONS and len(location) > 1 else location)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def error_answer(request: Request, exc: Exception) -> JSONResponse | None:
    """The answer to an exception a route raises on purpose; None for anything else (a bug: the 500 of ``access``)."""
    for kind, answer in _ANSWERS:
        if isinstance(exc, kind):
            return answer(request, exc)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route may raise on purpose through ``error_answer``."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        answer = error_answer(request, exc)
        assert answer is not None  # installed only for the kinds error_answer answers
        return answer

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's outermost layer answers with this, then re-raises: the access middleware logs it.
        return JSONResponse(internal_error(request_id(request)), 500)

    for kind, _ in _ANSWERS:
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, internal)


def internal_error(request_id: str) -> dict:
    """The body of a 500: the request id to find the traceback by in the server log, and nothing else."""
    return {
        "error": f"internal error; the server log has the details under request id {request_id}",
        "request_id": request_id,
    }


def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, exc.message, exc.field, exc.headers)


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid").removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    message = (
        first["message"] if first["message"].startswith(first["field"]) else f"{first['field']}: {first['message']}"
    )
    return error_response(request, 422, message, first["field"], errors=errors)


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(request, exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
    return error_response(request, 429, f"overloaded: {exc}", headers={"Retry-After": str(RETRY_AFTER_S)})


def _deadline(request: Request, exc: DeadlineExceededError) -> JSONResponse:
    message = str(exc) or "the request's deadline passed before it ran"
    return error_response(request, 504, f"deadline exceeded: {message}; send a longer X-Deadline-Ms or retry")


def _closed(request: Request, exc: BatcherClosedError) -> JSONResponse:
    return error_response(request, 503, f"not serving: {exc}", headers={"Retry-After": str(RETRY_AFTER_S)})


def _patterns_busy(request: Request, exc: PatternBusyError) -> JSONResponse:
    return error_response(request, 503, f"overloaded: {exc}", headers={"Retry-After": str(RETRY_AFTER_S)})


def _gallery_error(request: Request, exc: GalleryError) -> JSONResponse:
    # Its message names the gallery's file: logged here, not sent.
    logger.error("request %s: gallery error: %s", request_id(request), exc)
    message = f"the gallery could not complete the request (request id {request_id(request)}); retry shortly"
    return error_response(request, 503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


_ANSWERS: tuple[tuple[type[Exception], Callable[[Request, Any], JSONResponse]], ...] = (
    (ApiError, _api_error),
    (RequestValidationError, _validation),
    (HTTPException, _http_error),
    (QueueFullError, _queue_full),
    (DeadlineExceededError, _deadline),
    (BatcherClosedError, _closed),
    (GalleryError, _gallery_error),
    (PatternBusyError, _patterns_busy),
)
