"""The face API (``/v1``): embed, verify (the PDSN union rule), identify, and the gallery's identities.

Each route reads its body (JSON or multipart), decodes and aligns images on the thread pool (a request
alone on the server decodes its small crops on the event loop, which has nothing else to do), awaits
the batcher, and searches or commits the gallery on the thread pool again: under load the event loop
never waits on CPU work. Every answer says which cells masked the comparison and which model and precision answered.
An enrollment is answered 201 only once the gallery has committed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from pdsn.model.bundle_format import ModelContract
from pdsn.runtime.inputs import prepare_occlusion
from pdsn.serve import dispatch
from pdsn.serve.dispatch import Deadline, in_pool
from pdsn.serve.errors import identity_errors, input_errors
from pdsn.serve.images import load_faces
from pdsn.serve.payloads import EmbedRequest, EnrollRequest, IdentifyRequest, VerifyRequest, body_docs, read_body
from pdsn.serve.responses import (
    EmbedResponse,
    EnrollResponse,
    ErrorAnswer,
    IdentifyResponse,
    IdentityAnswer,
    IdentityList,
    MatchAnswer,
    Removed,
    VerifyResponse,
)
from pdsn.serve.state import ServeState

MAX_PAGE = 1000
# Served ahead of FastAPI's router (``pdsn.serve.fast_routes``); FastAPI documents them.
BUSY_FACE_ROUTES = ("/v1/embed", "/v1/verify", "/v1/identify")
# The most image data (aligned crops: a few kilobytes each) a request alone on the server decodes on the event loop.
INLINE_DECODE_BYTES = 64 * 1024
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (401, 404, 413, 415, 422, 429, 503, 504)
}


def face_router(state: ServeState) -> APIRouter:
    """The ``/v1`` routes over ``state``'s recognizer and gallery."""
    router = APIRouter(prefix="/v1", tags=["face API"], responses=_ERRORS)
    config = state.config

    @router.post(
        "/embed",
        summary="Embeddings of faces, each masked by its occluded cells",
        responses={200: {"model": EmbedResponse}},
        openapi_extra=body_docs(EmbedRequest),
    )
    async def embed(request: Request) -> Response:
        recognizer = state.serving()
        body = await read_body(request, EmbedRequest, state.pool)
        deadline = Deadline.of(request, config.deadline_ms)
        batch = await _decoded(
            state,
            body.images,
            body.landmarks,
            load_faces,
            body.images,
            "images",
            recognizer.contract,
            config.max_pixels,
            body.landmarks,
        )
        occlusion = await _cells(state, body.occlusion, batch, "occlusion")
        result = await dispatch.embeddings(recognizer, batch, occlusion, deadline)
        return _json(EmbedResponse, state, embeddings=result.tolist(), occluded_cells=_cell_lists(occlusion))

    @router.post(
        "/verify",
        summary="Do two faces match? Both are masked by the union of their occluded cells",
        responses={200: {"model": VerifyResponse}},
        openapi_extra=body_docs(VerifyRequest),
    )
    async def verify(request: Request) -> Response:
        recognizer = state.serving()
        body = await read_body(request, VerifyRequest, state.pool)
        deadline = Deadline.of(request, config.deadline_ms)
        aligned = body.landmarks_a is not None or body.landmarks_b is not None
        pair = await _decoded(
            state, [body.image_a, body.image_b], aligned, _pair, body, recognizer.contract, config.max_pixels
        )
        union = np.maximum(
            await _cells(state, body.occlusion_a, pair[:1], "occlusion_a"),
            await _cells(state, body.occlusion_b, pair[1:], "occlusion_b"),
        )
        first, second = await dispatch.embeddings(recognizer, pair, np.repeat(union, 2, axis=0), deadline)
        score = float(np.dot(first, second) / max(np.linalg.norm(first) * np.linalg.norm(second), 1e-12))
        match = None if body.threshold is None else score >= body.threshold
        return _json(VerifyResponse, state, score=score, match=match, occluded_cells=_cell_lists(union)[0])

    @router.post(
        "/identify",
        summary="The best-matching enrolled identities of one face (each compared under the union rule)",
        responses={200: {"model": IdentifyResponse}},
        openapi_extra=body_docs(IdentifyRequest),
    )
    async def identify(request: Request) -> Response:
        gallery = state.serving_gallery()
        body = await read_body(request, IdentifyRequest, state.pool)
        deadline = Deadline.of(request, config.deadline_ms)
        landmarks = None if body.landmarks is None else [body.landmarks]
        probe = await _decoded(
            state,
            [body.image],
            landmarks,
            load_faces,
            [body.image],
            "image",
            state.recognizer.contract,
            config.max_pixels,
            landmarks,
            single=True,
        )
        occlusion = await _cells(state, body.occlusion, probe, "occlusion")
        features = await dispatch.features(state.recognizer, probe, deadline)
        with input_errors("occlusion", "k", "threshold"):
            (result,) = await in_pool(
                state.pool, gallery.identify_features, features, occlusion, body.k, body.threshold
            )
        matches = [
            MatchAnswer(
                identity=m.identity, score=m.score, face_id=m.face_id, occluded_cells=m.occluded_cells, exact=m.exact
            )
            for m in result.matches
        ]
        return _json(IdentifyResponse, state, matches=matches, occluded_cells=result.occluded_cells)

    @router.post(
        "/identities",
        status_code=201,
        summary="Enroll an identity's faces; answered once committed",
        responses={201: {"model": EnrollResponse}, 409: {"model": ErrorAnswer}},
        openapi_extra=body_docs(EnrollRequest),
    )
    async def enroll(request: Request) -> Response:
        gallery = state.serving_gallery()
        body = await read_body(request, EnrollRequest, state.pool)
        deadline = Deadline.of(request, config.deadline_ms)
        faces = await in_pool(
            state.pool, load_faces, body.images, "images", state.recognizer.contract, config.max_pixels, body.landmarks
        )
        occlusion = await _cells(state, body.occlusion, faces, "occlusion")
        features = await dispatch.features(state.recognizer, faces, deadline)
        with identity_errors(body.identity), input_errors("identity", "metadata", "occlusion"):
            face_ids = await in_pool(
                state.pool, gallery.enroll_features, body.identity, features, occlusion, body.metadata, body.replace
            )
        answer = _json(
            EnrollResponse,
            state,
            identity=body.identity,
            face_ids=face_ids,
            occluded_cells=_cell_lists(occlusion),
            status=201,
        )
        answer.headers["Location"] = f"/v1/identities/{quote(body.identity, safe='')}"
        return answer

    @router.get("/identities", summary="Enrolled identities, sorted, a page at a time", response_model=IdentityList)
    async def identities(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)) -> IdentityList:
        gallery = state.serving_gallery()
        names = await in_pool(state.pool, gallery.identities, offset, limit)
        total = await in_pool(state.pool, len, gallery)
        return IdentityList(identities=names, total=total, offset=offset, limit=limit)

    @router.get("/identities/{identity:path}", summary="One identity's metadata", response_model=IdentityAnswer)
    async def identity(identity: str) -> IdentityAnswer:
        gallery = state.serving_gallery()
        with identity_errors(identity), input_errors("identity"):
            metadata = await in_pool(state.pool, gallery.metadata, identity)
        return IdentityAnswer(identity=identity, metadata=metadata)

    @router.delete("/identities/{identity:path}", summary="Remove an identity and its faces", response_model=Removed)
    async def remove(identity: str) -> Removed:
        gallery = state.serving_gallery()
        with identity_errors(identity), input_errors("identity"):
            await in_pool(state.pool, gallery.remove, identity)
        return Removed(identity=identity, removed=True, total=await in_pool(state.pool, len, gallery))

    return router


async def _cells(state, value: object, faces: np.ndarray, field: str) -> np.ndarray:
    """(count, 25) vectors from the request's cells; ``"auto"``: the bundle's estimator on ``faces``
    (a 422 naming the field when the bundle has none)."""
    with input_errors(field):
        if isinstance(value, str) and value == "auto":
            return await in_pool(state.pool, state.recognizer.estimate_occlusion, faces)
        return prepare_occlusion(value, len(faces), field)


async def _decoded(
    state: ServeState, files: list[bytes], aligned: object, call: Callable[..., np.ndarray], *args: Any, **kwargs: Any
) -> np.ndarray:
    """``call(*args, **kwargs)``, which decodes ``files``, on the event loop when this request is the only one in
    flight and its files are small crops (``aligned`` falsy: no landmarks); else on the thread pool.

    Alone, the request would only wait for the hand-off: on an idle machine waking a pool thread and then
    the loop again takes about as long as decoding a crop. With others in flight the loop must not wait on
    CPU work, and photos to align are larger work in any case.
    """
    if state.requests_in_flight <= 1 and not aligned and sum(len(f) for f in files) <= INLINE_DECODE_BYTES:
        return call(*args, **kwargs)
    return await in_pool(state.pool, call, *args, **kwargs)


def _pair(body: VerifyRequest, contract: ModelContract, max_pixels: int) -> np.ndarray:
    faces = []
    for side in ("a", "b"):
        points = getattr(body, f"landmarks_{side}")
        faces.append(
            load_faces(
                [getattr(body, f"image_{side}")],
                f"image_{side}",
                contract,
                max_pixels,
                None if points is None else [points],
                f"landmarks_{side}",
                single=True,
            )
        )
    return np.concatenate(faces)


def _cell_lists(occlusion: np.ndarray) -> list[list[int]]:
    """Each row's occluded cell ids, from (N, 25) vectors the runtime has already checked."""
    return [np.flatnonzero(row).tolist() for row in occlusion]


def _json(model: type[BaseModel], state: ServeState, status: int = 200, **fields) -> Response:
    """The answer as ``model``'s JSON; built from the service's own values, so not validated again."""
    answer = model.model_construct(model=state.model_id, precision=state.recognizer.precision, **fields)
    return Response(answer.model_dump_json(), status, media_type="application/json")
