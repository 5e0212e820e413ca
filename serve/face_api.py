"""The face API (``/v1``): embed, verify (the PDSN union rule), identify, and the gallery's identities.

Each route reads its body (JSON or multipart), decodes and aligns images on the thread pool (a request
alone on the server decodes its small crops on the event loop, which has nothing else to do), awaits
the batcher, and searches or commits the gallery on the thread pool again: under load the event loop
never waits on CPU work. Every answer says which cells masked the comparison and which model and precision answered.
An enrollment is answered 201 only once the gallery has committed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from pdsn.model.occlusion import Occlusion
from pdsn.runtime import DeadlineExceededError
from pdsn.runtime.detection import DetectedFace
from pdsn.runtime.face_finder import ALL_FACES, Located
from pdsn.runtime.photos import FaceSource
from pdsn.serve import dispatch
from pdsn.serve.dispatch import Deadline, in_pool
from pdsn.serve.errors import identity_errors, input_errors
from pdsn.serve.images import declared_sizes, decode_files, has_photo
from pdsn.serve.payloads import (
    DetectRequest,
    EmbedRequest,
    EnrollRequest,
    IdentifyRequest,
    VerifyRequest,
    body_docs,
    read_body,
)
from pdsn.serve.responses import (
    DetectResponse,
    EmbedResponse,
    EnrollResponse,
    ErrorResponse,
    Face,
    IdentifiedFace,
    IdentifyResponse,
    IdentitiesResponse,
    IdentityResponse,
    Match,
    RemoveResponse,
    VerifyResponse,
)
from pdsn.serve.state import ServeState

MAX_PAGE = 1000
MAX_OFFSET = 2**62  # within every store's integer range
# Served ahead of FastAPI's router (``pdsn.serve.fast_routes``); FastAPI documents them.
BUSY_FACE_ROUTES = ("/v1/embed", "/v1/verify", "/v1/identify", "/v1/detect")
# The most image data (aligned crops: a few kilobytes each) a request alone on the server decodes on the event loop.
INLINE_DECODE_BYTES = 64 * 1024
Handler = Callable[[Request], Awaitable[Response]]
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 429, 503, 504)
}


class FaceApi:
    """The ``/v1`` handlers over one service's state (its recognizer, gallery, pool and limits).

    Each handler takes the request (and its path or query values) and returns the answer; ``face_router``
    declares them on FastAPI, which documents them, and the busy ones are also served ahead of it.
    """

    def __init__(self, state: ServeState) -> None:
        self.state = state
        self.config = state.config

    async def detect(self, request: Request) -> Response:
        recognizer = self.state.serving()
        body = await read_body(request, DetectRequest, self.state.pool)
        deadline = Deadline.of(request, self.config.deadline_ms)
        files = [body.image]
        with self.state.pixels.hold(_declared(self.state, files, "image", True), "image"):
            (image,) = await _within(
                deadline, in_pool(self.state.pool, decode_files, files, "image", self.config.max_pixels, True)
            )
            with input_errors("image", "min_face"):
                found = await _within(deadline, in_pool(self.state.pool, recognizer.detect, image, body.min_face))
        faces = [_face(0, face) for face in found]
        return _json(DetectResponse, self.state, faces=faces, width=image.shape[1], height=image.shape[0])

    async def embed(self, request: Request) -> Response:
        recognizer = self.state.serving()
        body = await read_body(request, EmbedRequest, self.state.pool)
        deadline = Deadline.of(request, self.config.deadline_ms)
        located = await _faces_of(
            self.state, body.images, "images", body.landmarks, "landmarks", ALL_FACES, body, deadline
        )
        occlusion = await _cells(self.state, body.occlusion, located, "occlusion")
        result = await dispatch.embeddings(recognizer, located, occlusion, deadline)
        return _json(
            EmbedResponse,
            self.state,
            embeddings=result.tolist(),
            occluded_cells=_cell_lists(occlusion),
            faces=None if located.sources is None else _faces(located.sources),
        )

    async def verify(self, request: Request) -> Response:
        recognizer = self.state.serving()
        body = await read_body(request, VerifyRequest, self.state.pool)
        deadline = Deadline.of(request, self.config.deadline_ms)
        sides = []
        for side in ("a", "b"):
            field, points = f"image_{side}", getattr(body, f"landmarks_{side}")
            landmarks = None if points is None else [points]
            face = getattr(body, f"face_{side}")
            sides.append(
                await _faces_of(
                    self.state,
                    [getattr(body, field)],
                    field,
                    landmarks,
                    f"landmarks_{side}",
                    face,
                    body,
                    deadline,
                    True,
                )
            )
        (occlusion_a,) = await _cells(self.state, body.occlusion_a, sides[0], "occlusion_a")
        (occlusion_b,) = await _cells(self.state, body.occlusion_b, sides[1], "occlusion_b")
        scored = await dispatch.verification(recognizer, sides[0], sides[1], (occlusion_a, occlusion_b), deadline)
        threshold = body.threshold if body.threshold is not None else recognizer.bundle.decision_threshold
        match = None if threshold is None else scored.score >= threshold
        found = [None if side.sources is None else _faces(side.sources)[0] for side in sides]
        return _json(
            VerifyResponse,
            self.state,
            score=scored.score,
            match=match,
            threshold=threshold,
            occluded_cells=list(scored.occlusion.cells),
            face_a=found[0],
            face_b=found[1],
        )

    async def identify(self, request: Request) -> Response:
        gallery = self.state.serving_gallery()
        body = await read_body(request, IdentifyRequest, self.state.pool)
        deadline = Deadline.of(request, self.config.deadline_ms)
        landmarks = None if body.landmarks is None else [body.landmarks]
        located = await _faces_of(
            self.state, [body.image], "image", landmarks, "landmarks", ALL_FACES, body, deadline, single=True
        )
        occlusion = await _cells(self.state, body.occlusion, located, "occlusion")
        features = await dispatch.features(self.state.loaded_recognizer, located, deadline)
        with input_errors("occlusion", "k", "threshold"):
            results = await in_pool(
                self.state.pool, gallery.identify_features, features, occlusion, body.k, body.threshold
            )
        if located.sources is None:
            (result,) = results
            return _json(IdentifyResponse, self.state, matches=_matches(result), occluded_cells=result.occluded_cells)
        faces = [
            IdentifiedFace.model_construct(**vars(face), matches=_matches(result), occluded_cells=result.occluded_cells)
            for face, result in zip(_faces(located.sources), results)
            if face is not None  # one photo: every face of it was detected
        ]
        return _json(IdentifyResponse, self.state, matches=None, occluded_cells=None, faces=faces)

    async def enroll(self, request: Request) -> Response:
        gallery = self.state.serving_gallery()
        body = await read_body(request, EnrollRequest, self.state.pool)
        deadline = Deadline.of(request, self.config.deadline_ms)
        located = await _faces_of(
            self.state, body.images, "images", body.landmarks, "landmarks", body.face, body, deadline
        )
        occlusion = await _cells(self.state, body.occlusion, located, "occlusion")
        features = await dispatch.features(self.state.loaded_recognizer, located, deadline)
        with identity_errors(body.identity), input_errors("identity", "metadata", "occlusion"):
            face_ids = await in_pool(
                self.state.pool,
                gallery.enroll_features,
                body.identity,
                features,
                occlusion,
                body.metadata,
                body.replace,
            )
        answer = _json(
            EnrollResponse,
            self.state,
            identity=body.identity,
            face_ids=face_ids,
            occluded_cells=_cell_lists(occlusion),
            faces=None if located.sources is None else _faces(located.sources),
            status=201,
        )
        answer.headers["Location"] = f"/v1/identities/{quote(body.identity, safe='')}"
        return answer

    async def identities(
        self, offset: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(100, ge=1, le=MAX_PAGE)
    ) -> IdentitiesResponse:
        gallery = self.state.serving_gallery()
        names = await in_pool(self.state.pool, gallery.identities, offset, limit)
        total = await in_pool(self.state.pool, len, gallery)
        return IdentitiesResponse(identities=names, total=total, offset=offset, limit=limit)

    async def identity(self, identity: str) -> IdentityResponse:
        gallery = self.state.serving_gallery()
        with identity_errors(identity), input_errors("identity"):
            metadata = await in_pool(self.state.pool, gallery.metadata, identity)
        return IdentityResponse(identity=identity, metadata=metadata)

    async def remove(self, identity: str) -> RemoveResponse:
        gallery = self.state.serving_gallery()
        with identity_errors(identity), input_errors("identity"):
            await in_pool(self.state.pool, gallery.remove, identity)
        return RemoveResponse(identity=identity, removed=True, total=await in_pool(self.state.pool, len, gallery))


def face_router(api: FaceApi) -> APIRouter:
    """The ``/v1`` routes, each declared with its documentation over ``api``'s handler."""
    router = APIRouter(prefix="/v1", tags=["face API"], responses=_ERRORS)

    def post(path: str, handler: Handler, body: type[BaseModel], answer: type[BaseModel], summary: str) -> None:
        responses: dict[int | str, dict[str, Any]] = {200: {"model": answer}}
        docs = body_docs(body)
        router.add_api_route(path, handler, methods=["POST"], summary=summary, responses=responses, openapi_extra=docs)

    post("/detect", api.detect, DetectRequest, DetectResponse, "Faces in a photo: box, score and five landmarks each")
    post("/embed", api.embed, EmbedRequest, EmbedResponse, "Embeddings of faces, each masked by its occluded cells")
    verify = "Do two faces match? Both are masked by the union of their occluded cells"
    post("/verify", api.verify, VerifyRequest, VerifyResponse, verify)
    identify = "The best-matching enrolled identities of one face (each compared under the union rule)"
    post("/identify", api.identify, IdentifyRequest, IdentifyResponse, identify)
    router.add_api_route(
        "/identities",
        api.enroll,
        methods=["POST"],
        status_code=201,
        summary="Enroll an identity's faces; answered once committed",
        responses={201: {"model": EnrollResponse}, 409: {"model": ErrorResponse}},
        openapi_extra=body_docs(EnrollRequest),
    )
    one = "/identities/{identity:path}"
    router.add_api_route(
        "/identities",
        api.identities,
        methods=["GET"],
        summary="Enrolled identities, sorted, a page at a time",
        response_model=IdentitiesResponse,
    )
    router.add_api_route(
        one, api.identity, methods=["GET"], summary="One identity's metadata", response_model=IdentityResponse
    )
    router.add_api_route(
        one, api.remove, methods=["DELETE"], summary="Remove an identity and its faces", response_model=RemoveResponse
    )
    return router


async def _cells(state, value: object, located: Located, field: str) -> tuple[Occlusion, ...]:
    """One ``Occlusion`` per face from the request's cells (per image, each face taking its image's); ``"auto"``: the
    bundle's estimator on the faces (a 422 naming the field when the bundle has none)."""
    with input_errors(field):
        if isinstance(value, str) and value == "auto":
            return await in_pool(state.pool, state.loaded_recognizer.occlusion_of, value, located, field)
        return state.loaded_recognizer.occlusion_of(value, located, field)


async def _decoded(
    state: ServeState, files: list[bytes], aligned: object, call: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """``call(*args, **kwargs)``, which decodes ``files``, on the event loop when this request is the only one in
    flight and its files are small (``aligned`` falsy: no landmarks); else on the thread pool.

    Alone, the request would only wait for the hand-off: on an idle machine waking a pool thread and then
    the loop again takes about as long as decoding a crop. With others in flight the loop must not wait on
    CPU work, and photos to align are larger work in any case.
    """
    if state.requests_in_flight <= 1 and not aligned and sum(len(f) for f in files) <= INLINE_DECODE_BYTES:
        return call(*args, **kwargs)
    return await in_pool(state.pool, call, *args, **kwargs)


async def _faces_of(
    state: ServeState,
    files: list[bytes],
    field: str,
    landmarks: list | None,
    landmarks_field: str,
    face: int | str | None,
    body: Any,
    deadline: Deadline,
    single: bool = False,
) -> Located:
    """The request's faces in ``files`` (``single``: one image sent as ``field`` itself, so errors name
    ``field``, not ``field[0]``): their sizes read from the headers first (413 over the limits), their
    decoded pixels held within the server's budget while they are decoded and aligned (503 beyond it).

    Small crops (or photos the client aligns) go in one step. Photos go one at a time, each stage bounded by
    the request's deadline (504 when it passes, before the next image is touched), so a request of many
    large photos neither outlives its deadline nor holds more than one of the pool's threads at a time:
    requests take turns on the pool, image by image.
    """
    with state.pixels.hold(_declared(state, files, field, single), field):
        if landmarks is None and sum(len(f) for f in files) <= INLINE_DECODE_BYTES:  # small crops: moments of work
            deadline.remaining()
            images = await _decoded(state, files, None, decode_files, files, field, state.config.max_pixels, single)
            return await _located(state, images, field, None, landmarks_field, face, body, single)
        if landmarks is not None:
            decoding = _decoded(state, files, landmarks, decode_files, files, field, state.config.max_pixels, single)
            images = await _within(deadline, decoding)
            located = _located(state, images, field, landmarks, landmarks_field, face, body, single)
            return await _within(deadline, located)
        parts = []
        for index, data in enumerate(files):
            name = field if single else f"{field}[{index}]"
            decoding = in_pool(state.pool, decode_files, [data], name, state.config.max_pixels, True)
            image = await _within(deadline, decoding)
            located = _located(state, image, name, None, landmarks_field, face, body, single=True)
            parts.append(await _within(deadline, located))
        return _merged(parts)


async def _within(deadline: Deadline, work: Any) -> Any:
    """``work`` (a coroutine), or DeadlineExceededError (504) when the request's deadline passes first."""
    left = deadline.remaining()
    if left is None:
        return await work
    try:
        return await asyncio.wait_for(work, left)
    except TimeoutError:
        raise DeadlineExceededError("the request's deadline passed while its images were decoded or aligned") from None


def _merged(parts: list[Located]) -> Located:
    """The faces of images located one at a time, as one ``Located`` (each part is one image)."""
    batch = np.concatenate([part.batch for part in parts])
    if all(part.sources is None for part in parts):
        return Located(batch, None, len(parts))
    sources = [
        FaceSource(index, source.face)
        for index, part in enumerate(parts)
        for source in (part.sources or [FaceSource(0, None)] * len(part.batch))
    ]
    return Located(batch, sources, len(parts))


def _declared(state: ServeState, files: list[bytes], field: str, single: bool) -> int:
    config = state.config
    return declared_sizes(files, field, config.max_pixels, config.max_request_pixels, single)


async def _located(
    state: ServeState,
    images: list[np.ndarray],
    field: str,
    landmarks: list | None,
    landmarks_field: str,
    face: int | str | None,
    body: Any,
    single: bool,
) -> Located:
    """The request's faces: aligned crops as they are (on the loop: no work), photos aligned by the client's
    landmarks or by the faces the detector finds (on the thread pool)."""
    recognizer = state.loaded_recognizer
    given = images[0] if single else images
    if landmarks is not None:
        points = landmarks[0] if single else landmarks  # a single image comes with its one set
        with input_errors(landmarks_field, field):
            return await in_pool(
                state.pool, recognizer.locate, given, points, argument=field, landmarks_argument=landmarks_field
            )
    with input_errors(field, "min_face", "face"):
        if not has_photo(images, recognizer.contract):
            return recognizer.locate(given, argument=field)
        return await in_pool(state.pool, recognizer.locate, given, None, body.detection(), face, field)


def _faces(sources: list[FaceSource]) -> list[Face | None]:
    """Where each face was found; None for an aligned crop sent beside photos (it was not detected)."""
    return [None if source.face is None else _face(source.image, source.face) for source in sources]


def _face(image: int, face: DetectedFace) -> Face:
    return Face.model_construct(
        image=image,
        box=[float(v) for v in face.box],
        score=float(face.score),
        landmarks=[[float(x), float(y)] for x, y in face.landmarks],
    )


def _matches(result) -> list[Match]:
    return [
        Match(identity=m.identity, score=m.score, face_id=m.face_id, occluded_cells=m.occluded_cells, exact=m.exact)
        for m in result.matches
    ]


def _cell_lists(occlusion: tuple[Occlusion, ...]) -> list[list[int]]:
    return [list(o.cells) for o in occlusion]


def _json(model: type[BaseModel], state: ServeState, status: int = 200, **fields) -> Response:
    """The answer as ``model``'s JSON; built from the service's own values, so not validated again."""
    recognizer = state.loaded_recognizer
    answer = model.model_construct(
        model=state.model_id, precision=recognizer.precision, model_note=recognizer.bundle.model_note, **fields
    )
    return Response(answer.model_dump_json(), status, media_type="application/json")
