"""The face API's request bodies, read from JSON (images base64) or from multipart forms (images as files).

Both encodings fill the same pydantic models, so both are checked alike: a bad field is a 422
naming it. In a multipart form, files are the images, a field typed as text (``identity``) is
taken as sent, and every other field holds JSON (e.g. ``occlusion=[10, 11]``, ``k=3``).
"""

from __future__ import annotations

import json
import typing
from concurrent.futures import Executor
from typing import Annotated, TypeGuard, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from pdsn.errors import InputError
from pdsn.model.occlusion import Occlusion
from pdsn.runtime.gallery.names import MAX_IDENTITY_LENGTH, checked_identity
from pdsn.runtime.photos import DetectionSettings
from pdsn.serve.dispatch import in_pool
from pdsn.serve.errors import ApiError
from pdsn.serve.images import Upload, image_bytes

MAX_IMAGES = 256
# Larger JSON bodies are parsed off the event loop: a few aligned crops fit below, photos do not.
INLINE_JSON_BYTES = 256 * 1024
MAX_FORM_FIELDS = 32
MAX_K = 1000

_CELLS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 24}}
_OCCLUSION_HELP = (
    'null (no cell occluded), "auto" (the bundle\'s occlusion estimator decides), a list of occluded cell ids '
    "0..24 (row-major 5x5 grid) for every image, or one such list per image"
)


def _occlusion(value: object, info: ValidationInfo) -> object:
    """The field as checked ``Occlusion`` values (one for every image, or a list of one per image), ``"auto"``
    or None; a bad cell id is an ``InputError`` naming it (``occlusion[1]``, ``occlusion_b[0][2]``)."""
    field = info.field_name or "occlusion"

    def is_cells(item: object) -> TypeGuard[list[int]]:
        return isinstance(item, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in item)

    if value is None or value == "auto":
        return value
    if is_cells(value):
        return Occlusion.from_cells(value, field)
    if isinstance(value, list) and all(is_cells(item) for item in value):
        return [Occlusion.from_cells(item, f"{field}[{index}]") for index, item in enumerate(value)]
    raise ValueError(f"expected {_OCCLUSION_HELP}; got {json.dumps(value)[:80]}")


ImageFile = Annotated[
    bytes,
    PlainValidator(image_bytes),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "an image file, base64"}),
]
OcclusionField = Annotated[
    object,
    PlainValidator(_occlusion),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "null"},
                {"const": "auto"},
                _CELLS_SCHEMA,
                {"type": "array", "items": _CELLS_SCHEMA},
            ],
            "description": _OCCLUSION_HELP,
        }
    ),
]
# Five (x, y) points in the photo: left eye, right eye, nose tip, left and right mouth corners.
Landmarks = list[list[float]]
MinFace = Annotated[
    float | None,
    Field(
        ge=12, le=100_000, strict=True, description="smallest face side looked for in photos, in pixels (default 20)"
    ),
]


def _face_choice(value: object) -> int | str | None:
    if value is None or value == "largest" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"expected 'largest', a face index 0, 1, ... (as /v1/detect lists them) or null; got {value!r}")


FaceChoice = Annotated[
    int | str | None,
    PlainValidator(_face_choice),
    WithJsonSchema(
        {
            "anyOf": [{"const": "largest"}, {"type": "integer", "minimum": 0}, {"type": "null"}],
            "description": 'which face of a photo: "largest", an index as /v1/detect lists them, or null for the only one',
        }
    ),
]
Threshold = Annotated[
    float | None, Field(ge=-1.0, le=1.0, strict=True, description="match at or above this cosine score")
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Photos(_Body):
    min_face: MinFace = None

    def detection(self) -> DetectionSettings | None:
        return None if self.min_face is None else DetectionSettings(min_face=self.min_face)


class DetectRequest(_Photos):
    image: ImageFile


class EmbedRequest(_Photos):
    images: list[ImageFile] = Field(min_length=1, max_length=MAX_IMAGES)
    occlusion: OcclusionField = None
    landmarks: list[Landmarks] | None = Field(
        None, description="your own detector's 5 (x, y) points, one set per image; without, faces are found"
    )


class VerifyRequest(_Photos):
    image_a: ImageFile
    image_b: ImageFile
    occlusion_a: OcclusionField = None
    occlusion_b: OcclusionField = None
    threshold: Threshold = None
    landmarks_a: Landmarks | None = Field(None, description="your own detector's 5 (x, y) points in image_a")
    landmarks_b: Landmarks | None = Field(None, description="your own detector's 5 (x, y) points in image_b")
    face_a: FaceChoice = "largest"
    face_b: FaceChoice = "largest"


class IdentifyRequest(_Photos):
    image: ImageFile
    occlusion: OcclusionField = None
    k: int = Field(5, ge=1, le=MAX_K, strict=True)
    threshold: Threshold = None
    landmarks: Landmarks | None = Field(None, description="your own detector's 5 (x, y) points in the image")


class EnrollRequest(_Photos):
    identity: Annotated[str, AfterValidator(checked_identity)] = Field(
        description=f"the person's name: at most {MAX_IDENTITY_LENGTH} characters, NFC, no control or format characters"
    )
    images: list[ImageFile] = Field(min_length=1, max_length=MAX_IMAGES)
    occlusion: OcclusionField = None
    metadata: dict | None = None
    landmarks: list[Landmarks] | None = Field(
        None, description="your own detector's 5 (x, y) points, one set per image; without, faces are found"
    )
    replace: bool = Field(False, strict=True)
    face: FaceChoice = None


Body = TypeVar("Body", bound=_Body)


def body_docs(model: type[BaseModel]) -> dict:
    """The route's OpenAPI request body: ``model`` as JSON, and as a multipart form with image files."""
    schema = model.model_json_schema()
    properties: dict[str, dict] = {}
    form = {"type": "object", "properties": properties, "required": schema.get("required", [])}
    for name, prop in schema["properties"].items():
        image = prop.get("contentEncoding") == "base64"
        images = prop.get("items", {}).get("contentEncoding") == "base64"
        if image or images:
            binary = {"type": "string", "format": "binary"}
            properties[name] = {"type": "array", "items": binary} if images else binary
        else:
            text = "text" if prop.get("type") == "string" else "JSON text"
            properties[name] = {"type": "string", "description": f"{prop.get('description', name)} ({text})"}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "multipart/form-data": {"schema": form}},
        }
    }


async def read_body(request: Request, model: type[Body], pool: Executor) -> Body:
    """The request's body as ``model``: JSON, or a multipart form; 415 for any other content type.

    A JSON body over INLINE_JSON_BYTES is parsed (and its base64 decoded) on ``pool``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            return model.model_validate(await _form(request, model))
        if content_type in ("application/json", "") or content_type.endswith("+json"):
            body = await request.body()
            if len(body) <= INLINE_JSON_BYTES:
                return model.model_validate_json(body)
            return await in_pool(pool, model.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError([_reported(error) for error in exc.errors(include_url=False)]) from None
    raise ApiError(
        415,
        f"content type {content_type!r} is not accepted; send application/json (images base64) or "
        f"multipart/form-data (images as files)",
        "content-type",
    )


async def _form(request: Request, model: type[_Body]) -> dict:
    try:
        form = await request.form(max_files=MAX_IMAGES, max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, KeyError, ValueError) as exc:  # KeyError: a Content-Type without its boundary
        raise ApiError(
            400,
            f"body: not a well-formed multipart/form-data body ({type(exc).__name__}: {exc}); send the fields and "
            f"files as a multipart form with its boundary, or the request as JSON",
            "body",
        ) from None
    data: dict[str, object] = {}
    for name in dict.fromkeys(form.keys()):
        values = [await _value(v) for v in form.getlist(name)]
        field = model.model_fields.get(name)
        if field is None:
            data[name] = values[0]  # refused by the model as an unknown field, by name
            continue
        files = all(isinstance(v, Upload) for v in values)
        if files and typing.get_origin(field.annotation) is list:
            data[name] = values
        elif len(values) == 1:
            value = values[0]
            data[name] = value if isinstance(value, Upload) or field.annotation is str else _json_field(name, value)
        else:
            raise ApiError(422, f"{name}: sent {len(values)} times; send it once", name)
    return data


async def _value(value: UploadFile | str) -> Upload | str:
    return Upload(await value.read()) if isinstance(value, UploadFile) else value


def _json_field(name: str, text: str) -> object:
    """A form field's JSON value; text that is not JSON is passed as it is (``-F occlusion=auto``), for the
    model to accept or refuse by name."""
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise ApiError(422, f"{name}: its JSON nests too deeply for any field of this API", name) from None


def _reported(error: ErrorDetails) -> ErrorDetails:
    """A pydantic error as the service answers it: where a validator raised an ``InputError``, its own field
    (``occlusion[1]``, deeper than pydantic's location) and message; the context (not JSON) is dropped."""
    context = error.pop("ctx", {})
    cause = context.get("error")
    if isinstance(cause, InputError):
        return {**error, "loc": ("body", cause.field), "msg": str(cause)}
    return error
