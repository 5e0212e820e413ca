"""Image files and 5-point face alignment to the 112x96 crop (Pillow does the resampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pdsn.model.alignment import TEMPLATE_112X96, estimate_similarity, invert_transform
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); grey or RGBA files are converted to RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no such file {str(path)!r}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path} could not be read as an image: {exc}") from None


def align_face(image: np.ndarray, landmarks: object, template: np.ndarray = TEMPLATE_112X96) -> np.ndarray:
    """Warp ``image`` so its 5 landmarks (eyes, nose, mouth corners; x, y) land on the template."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected uint8 RGB (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
    matrix = estimate_similarity(landmarks, template)
    # Pillow maps output pixel centres through the inverse transform; landmark coordinates use
    # integer pixel centres (as cv2.warpAffine does), so shift by half a pixel on both sides.
    inverse = invert_transform(matrix)
    a, b, c = inverse[0]
    d, e, f = inverse[1]
    c += 0.5 * (a + b - 1.0)
    f += 0.5 * (d + e - 1.0)
    warped = Image.fromarray(image).transform(
        (CROP_WIDTH, CROP_HEIGHT), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)
