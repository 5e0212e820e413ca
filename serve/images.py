"""Images as clients send them (base64 in JSON, or multipart files) -> the model's input batch.

An image is the bytes of an image file: an aligned 112x96 (or 112x112) crop, or a photo, in which the
bundle's detector finds the faces (or which is aligned by the 5 landmarks the client sends). A file over the pixel limit is refused from its header (413) before it is
decoded; anything undecodable is a 422 naming the image.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from pdsn.model.bundle_format import ModelContract
from pdsn.runtime import decode_image
from pdsn.runtime.photos import is_photo
from pdsn.runtime.preprocess import ImageTooLargeError, declared_pixels
from pdsn.serve.errors import ApiError


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


def declared_sizes(files: list[bytes], field: str, max_pixels: int, request_pixels: int, single: bool = False) -> int:
    """The pixels a request's images declare in their headers, all read before any is decoded: 413 for an
    image over ``max_pixels`` or a request over ``request_pixels`` in all, 422 for a file that is no image."""
    total = 0
    for index, data in enumerate(files):
        name = field if single else f"{field}[{index}]"
        try:
            total += declared_pixels(data, max_pixels, name)
        except ValueError as exc:
            status = 413 if isinstance(exc, ImageTooLargeError) else 422
            raise ApiError(status, str(exc).replace("image bytes", "the image", 1), name) from None
    if total > request_pixels:
        raise ApiError(
            413,
            f"{field}: the request's images hold {total:,} pixels in all, over this server's budget of "
            f"{request_pixels:,} per request (--max-request-pixels); send fewer or smaller images per request",
            field,
        )
    return total


def decode_files(files: list[bytes], field: str, max_pixels: int, single: bool = False) -> list[np.ndarray]:
    """Each file as uint8 RGB; a file over the pixel limit is a 413 from its header, an undecodable one a 422.

    ``single``: one image sent as ``field`` itself, so errors name ``field``, not ``field[0]``.
    """
    return [_decode(data, field if single else f"{field}[{i}]", max_pixels) for i, data in enumerate(files)]


def has_photo(images: list[np.ndarray], contract: ModelContract) -> bool:
    return any(is_photo(image, contract) for image in images)


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ValueError as exc:
        status = 413 if isinstance(exc, ImageTooLargeError) else 422
        raise ApiError(status, f"{name}: {exc}".replace("image bytes", "the image", 1), name) from None
