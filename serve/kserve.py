"""The Open Inference Protocol (KServe v2) over HTTP for the raw model, so existing clients (e.g.
``tritonclient.http``) work unchanged: health, server and model metadata, model readiness, and
inference with the bundle's contract tensors, in JSON or with the binary tensor data extension.

Inputs: ``image`` (UINT8 [N,112,96,3], or FP32 [N,3,112,96] for a float-input bundle) and
``occlusion`` (FP32 [N,25], 1 = cell occluded; optional, default none). Output: ``embedding``
(FP32 [N,E]). Protocol errors are 400 with ``{"error": ...}``; overload, deadlines and limits
answer as on the face API (429, 504, 413, 401).
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pdsn.model.bundle_format import EMBEDDING_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.runtime.inputs import prepare_images, prepare_occlusion
from pdsn.serve.config import MODEL_VERSION
from pdsn.serve.dispatch import Deadline, embeddings, in_pool
from pdsn.serve.errors import ApiError, input_errors
from pdsn.serve.payloads import INLINE_JSON_BYTES
from pdsn.serve.state import ServeState
from pdsn.serve.tensors import HEADER_LENGTH, encode_response, parse_request, protocol_error

EXTENSIONS = ["binary_tensor_data"]


def kserve_router(state: ServeState) -> APIRouter:
    """The ``/v2`` routes over ``state``'s recognizer."""
    router = APIRouter(prefix="/v2", tags=["KServe v2 (Open Inference Protocol)"])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "pdsn-deploy", "version": _version(), "extensions": EXTENSIONS})

    @router.get("/health/live", summary="Server live (200 while the process serves HTTP)")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @router.get("/health/ready", summary="Server ready (200), or not yet / no longer (400, with the reason)")
    async def ready() -> JSONResponse:
        return _readiness(state)

    @router.get("/models/{name}", summary="Model metadata: inputs and outputs with datatype and shape")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        _check_model(state, name, version)
        return JSONResponse(_metadata(state))

    @router.get("/models/{name}/ready", summary="Model ready (200) or not (400)")
    @router.get("/models/{name}/versions/{version}/ready", summary="Model version ready (200) or not (400)")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        _check_model(state, name, version, loaded=False)
        return _readiness(state)

    @router.post("/models/{name}/infer", summary="Inference: JSON or binary tensor data")
    @router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        _check_model(state, name, version)
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
        batch, masks = _inputs(recognizer.contract, parsed.inputs)
        unknown = sorted(set(parsed.outputs) - {EMBEDDING_OUTPUT})
        if unknown:
            raise protocol_error(f"unknown output(s) {unknown}; this model has {[EMBEDDING_OUTPUT]}", "outputs")
        result = await embeddings(recognizer, batch, masks, deadline, field=OCCLUSION_INPUT)
        answer, headers = encode_response(name, MODEL_VERSION, parsed, {EMBEDDING_OUTPUT: result.astype(np.float32)})
        return Response(answer, headers=headers)

    return router


def _inputs(contract: ModelContract, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    unknown = sorted(set(inputs) - {IMAGE_INPUT, OCCLUSION_INPUT})
    if unknown:
        raise protocol_error(f"unknown input(s) {unknown}; this model takes {[IMAGE_INPUT, OCCLUSION_INPUT]}", "inputs")
    if IMAGE_INPUT not in inputs:
        raise protocol_error(f"input {IMAGE_INPUT!r} is missing; expected {_image_spec(contract)}", IMAGE_INPUT)
    image = inputs[IMAGE_INPUT]
    datatype, _ = _image_type(contract)
    if image.dtype != _numpy(datatype):
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
        masks = prepare_occlusion(occlusion, len(batch), OCCLUSION_INPUT)
    return batch, masks


def _metadata(state: ServeState) -> dict:
    recognizer = state.recognizer
    contract = recognizer.contract
    datatype, shape = _image_type(contract)
    return {
        "name": state.config.model_name,
        "versions": [MODEL_VERSION],
        "platform": f"pdsn_{recognizer.backend_info['backend']}",
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": datatype, "shape": shape},
            {"name": OCCLUSION_INPUT, "datatype": "FP32", "shape": [-1, contract.num_cells]},
        ],
        "outputs": [{"name": EMBEDDING_OUTPUT, "datatype": "FP32", "shape": [-1, contract.embedding_size]}],
    }


def _check_model(state: ServeState, name: str, version: str | None, loaded: bool = True) -> None:
    if name != state.config.model_name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {state.config.model_name!r}", "name")
    if version not in (None, "", MODEL_VERSION):
        raise ApiError(404, f"model {name!r} has no version {version!r}; it has version {MODEL_VERSION!r}", "version")
    if loaded:
        state.serving()


def _readiness(state: ServeState) -> JSONResponse:
    ready, reason = state.readiness()
    return JSONResponse({"ready": True} if ready else {"ready": False, "reason": reason}, 200 if ready else 400)


def _image_type(contract: ModelContract) -> tuple[str, list[int]]:
    datatype = "UINT8" if contract.image_layout == "nhwc-uint8" else "FP32"
    return datatype, [-1, *contract.image_shape]


def _image_spec(contract: ModelContract) -> str:
    datatype, shape = _image_type(contract)
    return f"{datatype} {shape}"


def _numpy(datatype: str) -> np.dtype:
    return np.dtype(np.uint8 if datatype == "UINT8" else np.float32)


def _version() -> str:
    try:
        return metadata.version("pdsn-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"
