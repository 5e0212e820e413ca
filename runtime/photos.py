"""What the runtime takes as an image, and which images are photos to find faces in.

An image is a numpy array, a file path (``str`` or ``pathlib.Path``: never read as a sequence), the
bytes of an image file, or a PIL image; files, bytes and PIL images are decoded to uint8 RGB by
``pdsn.runtime.preprocess``. A batch is a list or tuple of images, or an (N, H, W, C) array.

Each decoded image is then one of:
- an aligned crop in the bundle's layout (uint8 (112, 96, 3) RGB by default), used as it is;
- a uint8 (112, 112, 3) crop in insightface's 112x112 convention, whose template is the 112x96 one
  shifted 8 px right, so its centre 96 columns are the 112x96 crop;
- a photo (any other uint8 (H, W, 3) RGB array), in which the bundle's detector finds the faces,
  each aligned by its five landmarks.
Arrays that are none of these go to the crop checks, which say what is wrong with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import ModelContract
from pdsn.model.crop_alignment import SIMILARITY_112X96
from pdsn.model.detector_contract import (
    DEFAULT_MIN_FACE,
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THRESHOLDS,
    check_detection_arguments,
)
from pdsn.runtime.detection import DetectedFace
from pdsn.runtime.preprocess import DEFAULT_MAX_PIXELS, decode_image, load_image, rgb_of_pil

INSIGHTFACE_CROP = (112, 112, 3)
INSIGHTFACE_SHIFT = 8  # columns: the 112x112 template is the 112x96 one shifted right by 8 px
LARGEST = "largest"


class FaceCountError(PdsnError, ValueError):
    """A photo with no face, or with several where one is needed; ``found`` says how many were found."""

    def __init__(self, message: str, found: int) -> None:
        super().__init__(message)
        self.found = found


@dataclass(frozen=True)
class DetectionSettings:
    """How faces are looked for in photos: the smallest face side in pixels, the three stages' score
    thresholds, and the image pyramid's scale step. Checked once, when made."""

    min_face: float = DEFAULT_MIN_FACE
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    scale_factor: float = DEFAULT_SCALE_FACTOR

    def __post_init__(self) -> None:
        checked = check_detection_arguments(self.min_face, self.thresholds, self.scale_factor)
        for name, value in zip(("min_face", "thresholds", "scale_factor"), checked):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class FaceSource:
    """Where a face of a batch came from: which input ``image``, and its detection (None: given aligned)."""

    image: int
    face: DetectedFace | None


def image_items(images: object, argument: str = "images") -> list[object]:
    """The images of a call as a list: one image (array, path, bytes, PIL image) or a batch of them."""
    if _is_file_like(images) or _is_pil(images):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if len(images) == 0:
                raise ValueError(f"{argument}: empty batch (shape {images.shape}); pass at least one image")
            return list(images)
        return [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{argument}: empty batch; pass at least one image")
        return list(images)
    raise TypeError(
        f"{argument}: expected an image (numpy array, file path, bytes of an image file, or PIL image) or a "
        f"list of them, got {type(images).__name__}"
    )


def decoded(image: object, argument: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> object:
    """Files, bytes and PIL images decoded to uint8 RGB arrays; anything else returned as it is, for the
    crop checks to judge."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            return decode_image(image, max_pixels)
        except ValueError as exc:
            raise type(exc)(f"{argument}: {exc}") from None
    if _is_pil(image):
        width, height = image.size  # type: ignore[attr-defined]
        if width * height > max_pixels:
            raise ValueError(f"{argument}: {width}x{height} (WxH) is over the limit of {max_pixels:,} pixels")
        return rgb_of_pil(image, argument)  # type: ignore[arg-type]
    return image


def aligned_crop(image: object, contract: ModelContract) -> object | None:
    """``image`` as the bundle's aligned crop when it is one (a 112x112 crop cut to 112x96); None for a photo."""
    if not isinstance(image, np.ndarray):
        return image
    if is_photo(image, contract):
        return None
    if image.shape[-3:] == INSIGHTFACE_CROP and image.dtype == np.uint8 and _takes_insightface_crops(contract):
        return image[..., INSIGHTFACE_SHIFT : INSIGHTFACE_SHIFT + contract.width, :]
    return image


def is_photo(image: object, contract: ModelContract) -> TypeGuard[np.ndarray]:
    """A uint8 RGB (H, W, 3) array that is neither the bundle's crop nor (for a 112x96 bundle) a 112x112 crop."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        return False
    crops = [(contract.height, contract.width, 3)]
    if _takes_insightface_crops(contract):
        crops.append(INSIGHTFACE_CROP)
    return image.shape not in crops


def _takes_insightface_crops(contract: ModelContract) -> bool:
    """insightface's 112x112 crops hold the 112x96 crop; no other alignment's."""
    return contract.alignment == SIMILARITY_112X96 and contract.image_layout == "nhwc-uint8"


def chosen_face_index(faces: list[DetectedFace], face: int | str | None, argument: str) -> int:
    """The index of one face of a photo: the only one (``face=None``), the largest, or one by index (as
    ``detect`` lists them)."""
    if not faces:
        raise no_face_error(argument)
    if face is None:
        if len(faces) > 1:
            raise FaceCountError(
                f"{argument}: {len(faces)} faces found, exactly one expected; choose one with face='largest' "
                f"or face=INDEX (0..{len(faces) - 1}, in the order `detect` lists them)",
                len(faces),
            )
        return 0
    if face == LARGEST:
        return max(range(len(faces)), key=lambda i: faces[i].width * faces[i].height)
    if not 0 <= face < len(faces):  # type: ignore[operator]
        raise FaceCountError(
            f"{argument}: face={face}, but the photo has {len(faces)} face(s); the index must be 0..{len(faces) - 1}",
            len(faces),
        )
    return int(face)


def check_face_choice(face: object) -> int | str | None:
    """``face`` as a caller gives it: None, 'largest', or a non-negative index."""
    if face is None or face == LARGEST:
        return face
    if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or face < 0:
        raise TypeError(f"face: expected None, 'largest' or a face index 0, 1, ..., got {face!r}")
    return int(face)


def no_face_error(argument: str) -> FaceCountError:
    return FaceCountError(f"{argument}: no face found in the photo; {_NO_FACE_HINT}", 0)


def _is_file_like(value: object) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview))


def _is_pil(value: object) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


_NO_FACE_HINT = (
    "faces smaller than min_face (in pixels) are not looked for; pass a smaller min_face, a photo where the "
    "face is larger, or the face's 5 landmarks if you have your own detector"
)
