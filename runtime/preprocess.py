"""Image files and bytes as uint8 RGB, and 5-point face alignment to the bundle's crop (Pillow resamples
the 112x96 crop; dlib's chip is cut with dlib's own resampling, ``pdsn.model.dlib_chip``).

Decoding applies the EXIF orientation and converts every supported mode to 8-bit RGB as it would be
displayed: 16-bit grey (modes ``I;16*``, and ``I`` holding 0..65535) is scaled by 255/65535, float
grey (mode ``F``) must lie in [0, 1] and is scaled by 255, and transparency is composited on white,
as a viewer shows it on a page. Pillow itself reads 48- and 64-bit PNGs as 8-bit RGB / RGBA.
Other modes and other float ranges are refused rather than guessed.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pdsn.errors import PdsnError
from pdsn.model.alignment import checked_similarity, estimate_similarity, invert_transform
from pdsn.model.crop_alignment import CROP_ALIGNMENTS, DLIB_CHIP_150, SIMILARITY_112X96, CropAlignment
from pdsn.model.dlib_chip import dlib_chip

DEFAULT_MAX_PIXELS = 40_000_000
ALPHA_BACKGROUND = (255, 255, 255)
FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP", "PPM")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "PA", "RGBA")
_EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_SUPPORTED_MODES = (*_EIGHT_BIT_MODES, *_ALPHA_MODES, *_SIXTEEN_BIT_MODES, "F")
_FLOAT_TOLERANCE = 1e-3
# What Pillow raises for damaged or truncated data, besides its own error classes.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
# warnings.catch_warnings swaps the process-wide filter list; concurrent decodes must not interleave it.
_OPEN_LOCK = threading.Lock()


class ImageTooLargeError(PdsnError, ValueError):
    """An image file with more pixels than the loader accepts, refused from its header before decoding."""


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), upright; ValueError naming the file if it is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no such file {str(path)!r}")
    with path.open("rb") as file:
        return _decode(file, f"image {str(path)!r}", max_pixels)


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (e.g. an upload) as uint8 RGB (H, W, 3), exactly as ``load_image`` does."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image bytes: expected bytes of an encoded image file, got {type(data).__name__}")
    if not data:
        raise ValueError("image bytes: empty (0 bytes); expected an encoded image file")
    return _decode(io.BytesIO(data), "image bytes", max_pixels)


def declared_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image bytes") -> int:
    """The pixel count an encoded image's header declares, read without decoding it; the same refusals as
    ``decode_image`` for a file over ``max_pixels`` or one that is not an image."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise ValueError(f"{name}: expected the bytes of an encoded image file")
    with _open(io.BytesIO(data), name, max_pixels) as image:
        width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} (WxH) = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            f"refused before decoding. Downscale it"
        )
    return width * height


def rgb_of_pil(image: Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3), upright, converted exactly as ``load_image`` converts a file."""
    if image.mode not in _SUPPORTED_MODES:
        raise ValueError(
            f"{name} has Pillow mode {image.mode!r}, which is not supported; expected 8-bit or 16-bit "
            f"grey, palette, RGB(A), CMYK or float grey. Convert it to 8-bit RGB (e.g. PNG or JPEG)"
        )
    try:
        upright = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        raise ValueError(
            f"{name} could not be decoded ({type(exc).__name__}: {exc}); it may be truncated or damaged. "
            f"Expected a complete {image.format or 'image'} file"
        ) from None
    return _to_rgb(upright, name)


def align_face(
    image: object, landmarks: object, alignment: str = SIMILARITY_112X96, argument: str = "landmarks"
) -> np.ndarray:
    """Cut the face whose 5 landmarks (eyes, nose, mouth corners; x, y) are given out of ``image``, as the
    bundle's ``alignment`` (its contract's) says: the 112x96 crop, or dlib's 150x150 chip.

    Landmarks that cannot give a usable crop (outside the image, too close, mirrored, not face-shaped,
    or a crop mostly off the image) are refused; see ``pdsn.model.alignment.checked_similarity``.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected uint8 RGB (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    crop = CROP_ALIGNMENTS[alignment]
    height, width = image.shape[:2]
    matrix = checked_similarity(landmarks, (width, height), (crop.width, crop.height), crop.template, argument)
    return _cut(image, np.asarray(landmarks, dtype=np.float64).reshape(5, 2), matrix, crop)


def align_detected(image: np.ndarray, landmarks: np.ndarray, alignment: str = SIMILARITY_112X96) -> np.ndarray:
    """Align a face that the bundle's detector found in ``image`` (uint8 RGB).

    Its landmarks come in the template's order from a face the detector saw, so the checks that catch a
    caller's mistaken landmarks do not apply: a face cut by the photo's border is aligned too, the part
    of its crop beyond the border black (as the face's own pixels are missing there).
    """
    crop = CROP_ALIGNMENTS[alignment]
    return _cut(image, landmarks, estimate_similarity(landmarks, crop.template), crop)


def _cut(image: np.ndarray, landmarks: np.ndarray, matrix: np.ndarray, crop: CropAlignment) -> np.ndarray:
    if crop.name == DLIB_CHIP_150:
        return dlib_chip(image, landmarks, crop.template)
    return _warped(image, matrix, crop)


def _warped(image: np.ndarray, matrix: np.ndarray, crop: CropAlignment) -> np.ndarray:
    # Pillow maps output pixel centres through the inverse transform; landmark coordinates use
    # integer pixel centres (as cv2.warpAffine does), so shift by half a pixel on both sides.
    inverse = invert_transform(matrix)
    a, b, c = inverse[0]
    d, e, f = inverse[1]
    c += 0.5 * (a + b - 1.0)
    f += 0.5 * (d + e - 1.0)
    warped = Image.fromarray(image).transform(
        (crop.width, crop.height), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)


def _decode(file: BinaryIO, name: str, max_pixels: int) -> np.ndarray:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    with _open(file, name, max_pixels) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name} is {width}x{height} (WxH) = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,}; refused before decoding. Downscale it, or pass a larger max_pixels "
                f"if the source is trusted"
            )
        if image.format not in FORMATS:
            raise ValueError(f"{name} is in {image.format} format; expected one of {', '.join(FORMATS)}")
        return rgb_of_pil(image, name)


def _open(file: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with Pillow's decompression-bomb warning and error turned into ours."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies next
            return Image.open(file)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{name} was refused before decoding: {exc} This loader's limit is {max_pixels:,} pixels; "
            f"Pillow's own refuses more than 2 x PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image Pillow can identify; expected one of {', '.join(FORMATS)}") from None
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{name} could not be read as an image ({type(exc).__name__}: {exc})") from None


def _to_rgb(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_sixteen_to_eight_bits(np.asarray(image), name))
    if image.mode == "F":
        return _grey_to_rgb(_unit_float_to_eight_bits(np.asarray(image), name))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _sixteen_to_eight_bits(values: np.ndarray, name: str) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"{name} has 32-bit integer pixels spanning [{low}, {high}]; expected 16-bit values 0..65535. "
            f"Save it as 8- or 16-bit"
        )
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _unit_float_to_eight_bits(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has NaN or infinite float pixels; expected finite values in [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise ValueError(
            f"{name} has float pixels spanning [{low:.4g}, {high:.4g}]; expected [0, 1] (scaled by 255). "
            f"Rescale it to [0, 1], or save it as 8- or 16-bit integers"
        )
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)
