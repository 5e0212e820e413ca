"""KServe v2 inference, ``POST /v2/models/{name}[/versions/{version}]/infer``: the load-carrying route,
served ahead of FastAPI's router (``pdsn.serve.fast_routes``) and documented in the OpenAPI spec here
(it is no FastAPI route).

Inputs: ``image`` (UINT8 [N,112,96,3], or FP32 [N,3,112,96] for a float-input bundle) and
``occlusion`` (FP32 [N,25], 1 = cell occluded; optional, default none). Output: ``embedding``
(FP32 [N,E]). Protocol errors are 400 with ``{"error": ...}``; overload, deadlines and limits
answer as on the face API (429, 504, 413, 401), through the same ``error_answer``.
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pdsn.model.bundle_format import EMBEDDING_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.model.occlusion import Occlusion
from pdsn.runtime.face_finder import Located
from pdsn.runtime.inputs import prepare_images, prepare_occlusion
from pdsn.serve.config import MODEL_VERSION
from pdsn.serve.dispatch import Deadline, embeddings, in_pool
from pdsn.serve.errors import ApiError, input_errors
from pdsn.serve.payloads import INLINE_JSON_BYTES
from pdsn.serve.state import ServeState
from pdsn.serve.tensors import HEADER_LENGTH, encode_response, parse_request, protocol_error

INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
TAG = "KServe v2 (Open Inference Protocol)"


def infer_routes(state: ServeState) -> list[Route]:
    """The inference routes over ``state``'s recognizer, for ``FastRoutes``."""
    endpoint = InferEndpoint(state)
    return [Route(path, endpoint.answer, methods=["POST"], name="infer") for path in INFER_PATHS]


class InferEndpoint:
    """The endpoint of both inference paths."""

    def __init__(self, state: ServeState) -> None:
        self.state = state

    async def answer(self, request: Request) -> Response:
        return await self.infer(request, **request.path_params)

    async def infer(self, request: Request, name: str, version: str | None = None) -> Response:
        state = self.state
        check_model(state, name, version, loaded=False)
        recognizer = state.serving()
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise ApiError(415, f"Content-Encoding {encoding!r} is not accepted; send the request uncompressed")
        body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
        if header_length is None and len(body) > INLINE_JSON_BYTES:  # tensors in JSON: parsed off the event loop
            parsed = await in_pool(state.pool, parse_request, body, header_length)
        else:
            parsed = parse_request(body, header_length)
        deadline = Deadline.of(request, state.config.deadline_ms).tightened(parsed.timeout_s)
        faces, occlusions = _inputs(recognizer.contract, parsed.inputs)
        unknown = sorted(set(parsed.outputs) - {EMBEDDING_OUTPUT})
        if unknown:
            raise protocol_error(f"unknown output(s) {unknown}; this model has {[EMBEDDING_OUTPUT]}", "outputs")
        result = await embeddings(recognizer, faces, occlusions, deadline)
        answer, headers = encode_response(name, MODEL_VERSION, parsed, {EMBEDDING_OUTPUT: result.astype(np.float32)})
        return Response(answer, headers=headers)


def check_model(state: ServeState, name: str, version: str | None, loaded: bool = True) -> None:
    """404 for a model or version this server does not serve; 503 (with ``loaded``) until it is ready."""
    if name != state.config.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {state.config.model_name!r}", "name")
    if version not in (None, "", MODEL_VERSION):
        raise ApiError(404, f"model {name!r} has no version {version!r}; it has version {MODEL_VERSION!r}", "version")
    if loaded:
        state.serving()


def image_type(contract: ModelContract) -> tuple[str, list[int]]:
    """The ``image`` input's KServe datatype and shape (-1: any batch size)."""
    datatype = "UINT8" if contract.image_layout == "nhwc-uint8" else "FP32"
    return datatype, [-1, *contract.image_shape]


def infer_openapi() -> dict:
    """The OpenAPI path items of the inference routes (they are not FastAPI routes, so FastAPI cannot list them)."""
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": [IMAGE_INPUT, OCCLUSION_INPUT]},
            "datatype": {"type": "string", "enum": ["UINT8", "FP32"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array", "description": "the values, row major (absent when sent as binary data)"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "description": "bytes after the JSON header"}},
            },
        },
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": tensor, "minItems": 1},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"const": EMBEDDING_OUTPUT}}},
            },
            "parameters": {"type": "object", "properties": {"timeout": {"type": "integer", "description": "µs"}}},
        },
    }
    binary = (
        "the JSON request (its length in the Inference-Header-Content-Length header), then the raw "
        "little-endian data of each input that has a binary_data_size parameter, in input order"
    )
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    responses = {
        "200": {
            "description": f"{EMBEDDING_OUTPUT} FP32 [N, E], in JSON or as binary data after the JSON header",
            "content": {"application/json": {}, "application/octet-stream": {}},
        },
        **{str(status): error for status in (400, 401, 404, 405, 413, 415, 429, 503, 504)},
    }
    parameters = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    items = {}
    for path in INFER_PATHS:
        versioned = "{version}" in path
        path_parameters = parameters + (
            [{"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}] if versioned else []
        )
        items[path] = {
            "post": {
                "tags": [TAG],
                "summary": "Inference on one version" if versioned else "Inference: JSON or binary tensor data",
                "operationId": f"infer{'_version' if versioned else ''}",
                "parameters": path_parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": request},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary", "description": binary}
                        },
                    },
                },
                "responses": responses,
            }
        }
    return items


def _inputs(contract: ModelContract, inputs: dict[str, np.ndarray]) -> tuple[Located, tuple[Occlusion, ...]]:
    unknown = sorted(set(inputs) - {IMAGE_INPUT, OCCLUSION_INPUT})
    if unknown:
        raise protocol_error(f"unknown input(s) {unknown}; this model takes {[IMAGE_INPUT, OCCLUSION_INPUT]}", "inputs")
    if IMAGE_INPUT not in inputs:
        raise protocol_error(f"input {IMAGE_INPUT!r} is missing; expected {_image_spec(contract)}", IMAGE_INPUT)
    image = inputs[IMAGE_INPUT]
    datatype, _ = image_type(contract)
    if image.dtype != np.dtype(np.uint8 if datatype == "UINT8" else np.float32):
        raise protocol_error(
            f"input {IMAGE_INPUT!r}: datatype {image.dtype}, expected {_image_spec(contract)}", IMAGE_INPUT
        )
    with input_errors(IMAGE_INPUT, status=400):
        batch = prepare_images(image, contract, IMAGE_INPUT)
    occlusion = inputs.get(OCCLUSION_INPUT)
    expected = f"FP32 [N, {contract.num_cells}]"
    if occlusion is not None and (occlusion.dtype != np.float32 or occlusion.ndim != 2):
        given = f"{occlusion.dtype} {list(occlusion.shape)}"
        raise protocol_error(f"input {OCCLUSION_INPUT!r}: {given}, expected {expected}", OCCLUSION_INPUT)
    with input_errors(OCCLUSION_INPUT, status=400):
        occlusions = prepare_occlusion(occlusion, len(batch), OCCLUSION_INPUT)
    return Located(batch, None, len(batch)), occlusions


def _image_spec(contract: ModelContract) -> str:
    datatype, shape = image_type(contract)
    return f"{datatype} {shape}"
