"""Images as clients send them (base64 in JSON, or multipart files) -> the model's input batch.

An image is the bytes of an image file: an aligned 112x96 crop, or a photo with its 5 landmarks,
which is aligned here. A file over the pixel limit is refused from its header (413) before it is
decoded; anything undecodable is a 422 naming the image.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from pdsn.model.bundle_format import ModelContract
from pdsn.runtime import decode_image
from pdsn.runtime.inputs import prepare_images
from pdsn.runtime.preprocess import ImageTooLargeError, align_face
from pdsn.serve.errors import ApiError, input_errors


class Upload(bytes):
    """An image file received as a multipart upload (already bytes: not base64)."""


def image_bytes(value: object) -> bytes:
    """A pydantic validator: the file bytes of a base64 string (a ``data:`` URL prefix allowed) or an upload."""
    if isinstance(value, Upload):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"expected the base64 text of an image file (JPEG, PNG or WebP), got {type(value).__name__}")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc}); send the image file's bytes base64-encoded") from None
    if not data:
        raise ValueError("empty image; send the base64 text of an image file (JPEG, PNG or WebP)")
    return data


def load_faces(
    files: list[bytes],
    field: str,
    contract: ModelContract,
    max_pixels: int,
    landmarks: list | None = None,
    landmarks_field: str = "landmarks",
    single: bool = False,
) -> np.ndarray:
    """Decode (and with ``landmarks``, align) every file into one batch in the model's input layout.

    ``single``: one image sent as ``field`` itself, so errors name ``field``, not ``field[0]``.
    """
    if landmarks is not None and len(landmarks) != len(files):
        raise ApiError(
            422,
            f"{landmarks_field}: {len(landmarks)} landmark sets for {len(files)} images; send one set of 5 (x, y) "
            f"points per image, or none for aligned 112x96 crops",
            landmarks_field,
        )
    faces = []
    for index, data in enumerate(files):
        name = field if single else f"{field}[{index}]"
        image = _decode(data, name, max_pixels)
        if landmarks is not None:
            points_name = landmarks_field if single else f"{landmarks_field}[{index}]"
            with input_errors(points_name):
                image = align_face(image, np.asarray(landmarks[index], dtype=np.float64), argument=points_name)
        faces.append(image)
    with input_errors(field):
        batch = prepare_images(faces[0] if single else faces, _uint8_contract(contract), field)
    return _model_layout(batch, contract)


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ValueError as exc:
        status = 413 if isinstance(exc, ImageTooLargeError) else 422
        raise ApiError(status, f"{name}: {exc}".replace("image bytes", "the image", 1), name) from None


def _uint8_contract(contract: ModelContract) -> ModelContract:
    """Decoded files are uint8 HxWx3 whatever the bundle takes; they are checked as such."""
    if contract.image_layout == "nhwc-uint8":
        return contract
    return ModelContract(
        image_layout="nhwc-uint8", height=contract.height, width=contract.width, channels=contract.channels
    )


def _model_layout(batch: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 NHWC as the bundle takes it: as is, or normalised NCHW float32 for a float-input bundle."""
    if contract.image_layout == "nhwc-uint8":
        return batch
    norm = contract.normalization
    scaled = (batch.astype(np.float32) / np.float32(norm["scale"]) - np.float32(norm["mean"])) / np.float32(norm["std"])
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
