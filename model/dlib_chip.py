"""dlib-compatible 150x150 face chips from our detector's five landmarks (numpy only).

dlib's face recognition ResNet (``pdsn.model.dlib_resnet``) wants the chips that dlib's
``get_face_chip(img, shape, size=150, padding=0.25)`` cuts around its own 5-point shape predictor's
points (eye corners and the bottom of the nose). ``dlib_chip`` cuts the same chip from MTCNN's five
landmarks (eye centres, nose tip, mouth corners; x, y in image pixels, integer pixel centres): it
fits the similarity transform from ``TEMPLATE_DLIB_150`` to the landmarks, as dlib fits its mean-face
points to its shape, and then resamples as dlib 20's ``extract_image_chip`` does:

- the chip->image transform is carried as dlib's ``chip_details`` (a rectangle whose corners map to
  the chip's corner pixel centres, and an angle), so chip pixel (0, 0) lies on the rectangle's
  top-left corner and pixel (149, 149) on its bottom-right one;
- when the rectangle is more than twice the chip's size, dlib first shrinks the image (cropped to the
  rectangle's bounding box grown by a margin) with its ``pyramid_down<2>``, a 5x5 [1 4 6 4 1]
  binomial filter and every other pixel, integer sums floored, as often as that still leaves more
  pixels than the chip has, and maps the rectangle down with its own ``point_down``
  (``p / 2 - (1.25, 0.75)``; the filter's actual centre is ``p / 2 - (1, 1)``, a quirk kept here);
- each chip pixel is bilinear from the four neighbours of its point, truncated to uint8; points whose
  neighbourhood leaves the (cropped) image are black.

Given dlib's own transform this reproduces ``dlib.get_face_chip`` bit for bit on the test photos
(``tests/test_dlib_chip.py``), pyramid levels included; Pillow's bilinear (rounded, no pyramid) would
not, hence numpy. dlib's own template lives in a frame of ``size * (padding + p) / (1 + 2 padding)``
for mean-face points ``p`` in [0, 1]; chip pixels are that frame about its centre (75, 75) moved by
half a pixel to (74.5, 74.5) and scaled by ``149 s / (150 s - 1)`` (``s``: image pixels per chip
pixel; 0.996 to 1.004 on the faces measured), since dlib's rectangle is ``150 s - 1`` wide.
"""

from __future__ import annotations

import math

import numpy as np

from pdsn.model.alignment import estimate_similarity

DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25

# Where MTCNN's five landmarks (left eye centre, right eye centre, nose tip, left and right mouth
# corners; the image's left first) fall in dlib's 150x150 chip (padding 0.25), in chip pixels with
# integer pixel centres. Derived on the 10 faces that both dlib's HOG detector (upsampled once) and our
# detector (min_face 40) find in insightface's t1.jpg (6 people) and face_recognition's biden.jpg,
# obama.jpg, obama2.jpg, obama3.jpg (8 people in all): each face's MTCNN landmarks were mapped into
# dlib's own chip of that face (``image_to_chip`` of ``dlib.get_face_chip_details(shape, 150, 0.25)``
# from dlib's 5-point shape predictor), and this is their mean. The per-face spread is 2.5 to 10 chip
# pixels (head pose moves dlib's eye corners and nose bottom differently from MTCNN's points).
#
# The alternative, dlib's 68-point mean face (``get_face_chip_details``) read at MTCNN's points (eye
# centre = mean of the eye's six points, nose tip = point 30, mouth corners = points 48 and 54), is
# ANALYTIC_TEMPLATE_DLIB_150. On those 10 faces dlib's ResNet puts our chips at a mean (max) distance
# of 0.188 (0.405) from dlib's own descriptors with this template and 0.197 (0.445) with the analytic
# one; left out in turn (each face's template the mean of the other nine), this one gives 0.198
# (0.430). The mean face's nose tip sits 2.7 px above, and its mouth corners 2 to 3.5 px above and
# 4 to 7 px left of, where MTCNN puts them on dlib's chips.
TEMPLATE_DLIB_150 = np.array(
    [
        [48.5635, 44.7945],
        [103.1686, 43.8954],
        [71.7938, 78.7221],
        [53.9546, 106.0068],
        [103.7885, 104.4765],
    ],
    dtype=np.float64,
)
TEMPLATE_DLIB_150.setflags(write=False)

ANALYTIC_TEMPLATE_DLIB_150 = np.array(
    [
        [47.0566, 46.1067],
        [99.9692, 46.1067],
        [73.5130, 76.0621],
        [49.9216, 102.5157],
        [97.1043, 102.5157],
    ],
    dtype=np.float64,
)
ANALYTIC_TEMPLATE_DLIB_150.setflags(write=False)

_PYRAMID_TAPS = np.array([1, 4, 6, 4, 1], dtype=np.uint32)
_POINT_DOWN_OFFSET = np.array([1.25, 0.75])


def dlib_chip(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray = TEMPLATE_DLIB_150) -> np.ndarray:
    """The 150x150 uint8 RGB chip of the face whose five landmarks (eyes, nose, mouth corners; x, y)
    are ``landmarks``, cut from ``image`` (uint8 RGB (H, W, 3)) as dlib's ``get_face_chip`` would."""
    _check_image(image)
    rect, angle = chip_details(landmarks, template)
    return extract_chip(image, rect, angle)


def chip_details(
    landmarks: np.ndarray, template: np.ndarray = TEMPLATE_DLIB_150, size: int = DLIB_CHIP_SIZE
) -> tuple[tuple[float, float, float, float], float]:
    """dlib's ``chip_details`` (rectangle left, top, right, bottom, and angle) of the similarity transform
    from ``template`` (chip pixels) to ``landmarks`` (image pixels), fitted in the image as dlib fits it."""
    forward = estimate_similarity(template, landmarks)  # chip -> image, least squares in the image
    scale = math.hypot(forward[0, 0], forward[1, 0])
    angle = math.atan2(forward[1, 0], forward[0, 0])
    centre = forward[:, :2] @ np.full(2, (size - 1) / 2) + forward[:, 2]
    half = (size - 1) * scale / 2
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half), angle


def image_to_chip(rect: tuple[float, float, float, float], angle: float, size: int = DLIB_CHIP_SIZE) -> np.ndarray:
    """The 2x3 affine matrix taking image pixels to chip pixels for dlib's ``chip_details`` (``rect``,
    ``angle``), as dlib's ``get_mapping_to_chip``: row points, ``p' = M[:, :2] @ p + M[:, 2]``."""
    corners = _rotated_corners(np.asarray(rect, dtype=np.float64), angle)
    chip = np.array([[0.0, 0.0], [size - 1.0, 0.0], [size - 1.0, size - 1.0]])
    return _affine_from_three(corners[:3], chip)


def extract_chip(
    image: np.ndarray, rect: tuple[float, float, float, float], angle: float, size: int = DLIB_CHIP_SIZE
) -> np.ndarray:
    """dlib's ``extract_image_chip(image, chip_details(rect, chip_dims(size, size), angle), chip)`` with
    bilinear interpolation: uint8 RGB (size, size, 3)."""
    _check_image(image)
    height, width = image.shape[:2]
    bounds = np.asarray(rect, dtype=np.float64)
    area = float(size * size)
    # How many times dlib halves the image first, and the margin it crops around the chip's corners.
    depth, grow, low = 0, 2.0, _rect_down(bounds)
    while _area(low) > area:
        low, depth, grow = _rect_down(low), depth + 1, grow * 2 + 2
    corners = _rotated_corners(bounds, angle)
    box = np.array(
        [
            max(corners[:, 0].min() - grow, 0.0),
            max(corners[:, 1].min() - grow, 0.0),
            min(corners[:, 0].max() + grow, width - 1.0),
            min(corners[:, 1].max() + grow, height - 1.0),
        ]
    )
    left, top, right, bottom = (_lround(value) for value in box)
    if right < left or bottom < top:
        return np.zeros((size, size, 3), dtype=np.uint8)
    source = image[top : bottom + 1, left : right + 1]
    bounds = bounds - np.array([left, top, left, top], dtype=np.float64)
    while _area(_rect_down(bounds)) > area:
        source, bounds = _pyramid_down(source), _rect_down(bounds)
    chip_corners = np.array([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0]])
    to_source = _affine_from_three(chip_corners, _rotated_corners(bounds, angle)[[0, 1, 3]])
    return _bilinear(source, to_source, size)


def _rotated_corners(rect: np.ndarray, angle: float) -> np.ndarray:
    """The rectangle's corners tl, tr, br, bl rotated by ``angle`` about its centre (dlib's ``rotate_point``)."""
    left, top, right, bottom = rect
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom]])
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return (corners - centre) @ rotation.T + centre


def _affine_from_three(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 affine matrix that takes three source points exactly onto three target points."""
    design = np.hstack([source, np.ones((3, 1))])
    return np.linalg.solve(design, target).T


def _rect_down(rect: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>::rect_down``."""
    return rect / 2.0 - np.tile(_POINT_DOWN_OFFSET, 2)


def _area(rect: np.ndarray) -> float:
    """dlib's ``drectangle::area``: (right - left + 1) * (bottom - top + 1), 0 when empty."""
    width, height = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
    return 0.0 if width <= 0 or height <= 0 else float(width * height)


def _lround(value: float) -> int:
    """C's ``lround``: halves away from zero."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def _pyramid_down(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` of an RGB image: [1 4 6 4 1]^2 / 256 at every other pixel, floored.

    Output pixel (r, c) is centred on input pixel (2r + 2, 2c + 2)."""
    rows, cols = image.shape[:2]
    if rows <= 8 or cols <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    out_rows, out_cols = (rows - 3) // 2, (cols - 3) // 2
    pixels = image.astype(np.uint32)
    across = sum(tap * pixels[:, k : k + 2 * out_cols : 2] for k, tap in enumerate(_PYRAMID_TAPS))
    down = sum(tap * across[k : k + 2 * out_rows : 2] for k, tap in enumerate(_PYRAMID_TAPS))
    return (down // 256).astype(np.uint8)


def _bilinear(source: np.ndarray, chip_to_source: np.ndarray, size: int) -> np.ndarray:
    """dlib's ``transform_image`` with ``interpolate_bilinear``: black where a point's four neighbours
    are not all inside ``source``, and the weighted sum truncated (not rounded) to uint8."""
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64)), axis=-1)
    points = grid @ chip_to_source[:, :2].T + chip_to_source[:, 2]
    x, y = points[..., 0], points[..., 1]
    left, top = np.floor(x), np.floor(y)
    rows, cols = source.shape[:2]
    inside = (left >= 0) & (top >= 0) & (left + 1 < cols) & (top + 1 < rows)
    chip = np.zeros((size, size, 3), dtype=np.uint8)
    if not inside.any():
        return chip
    col, row = left[inside].astype(np.intp), top[inside].astype(np.intp)
    across = (x[inside] - left[inside])[:, None]
    down = (y[inside] - top[inside])[:, None]
    pixels = source.astype(np.float64)
    upper = (1 - across) * pixels[row, col] + across * pixels[row, col + 1]
    lower = (1 - across) * pixels[row + 1, col] + across * pixels[row + 1, col + 1]
    chip[inside] = ((1 - down) * upper + down * lower).astype(np.uint8)
    return chip


def _check_image(image: object) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected uint8 RGB (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
