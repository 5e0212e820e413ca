"""The Open Inference Protocol (KServe v2) over HTTP for the raw model, so existing clients (e.g.
``tritonclient.http``) work unchanged: health, server and model metadata and model readiness here;
inference (JSON or binary tensor data) in ``pdsn.serve.kserve_infer``.
"""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pdsn.model.bundle_format import EMBEDDING_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT
from pdsn.serve.config import MODEL_VERSION
from pdsn.serve.kserve_infer import TAG, check_model, image_type
from pdsn.serve.state import ServeState

EXTENSIONS = ["binary_tensor_data"]


def kserve_router(state: ServeState) -> APIRouter:
    """The ``/v2`` routes over ``state``'s recognizer."""
    router = APIRouter(prefix="/v2", tags=[TAG])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "pdsn-deploy", "version": _version(), "extensions": EXTENSIONS})

    @router.api_route(
        "/health/live", methods=["GET", "HEAD"], summary="Server live (200 while the process serves HTTP)"
    )
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @router.api_route(
        "/health/ready",
        methods=["GET", "HEAD"],
        summary="Server ready (200), or not yet / no longer (400, with the reason)",
    )
    async def ready() -> JSONResponse:
        return _readiness(state)

    @router.get("/models/{name}", summary="Model metadata: inputs and outputs with datatype and shape")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        check_model(state, name, version)
        return JSONResponse(_metadata(state))

    @router.api_route("/models/{name}/ready", methods=["GET", "HEAD"], summary="Model ready (200) or not (400)")
    @router.api_route(
        "/models/{name}/versions/{version}/ready",
        methods=["GET", "HEAD"],
        summary="Model version ready (200) or not (400)",
    )
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        check_model(state, name, version, loaded=False)
        return _readiness(state)

    return router


def _metadata(state: ServeState) -> dict:
    recognizer = state.serving()
    contract = recognizer.contract
    datatype, shape = image_type(contract)
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


def _readiness(state: ServeState) -> JSONResponse:
    ready, reason = state.readiness()
    body: dict = {"ready": True} if ready else {"ready": False, "reason": reason}
    damaged = len(state.gallery.damaged) if ready and state.gallery is not None else 0
    if damaged:  # served, but some enrolled faces are left out: the operator should repair the gallery
        body["gallery_damaged_faces"] = damaged
    return JSONResponse(body, 200 if ready else 400)


def _version() -> str:
    try:
        return metadata.version("pdsn-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"
