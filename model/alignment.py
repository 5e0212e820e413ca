"""Five-point similarity alignment geometry (numpy only).

A face is aligned by the similarity transform (rotation, uniform scale, translation; never a
reflection) that best maps its five landmarks onto a fixed template in the 112x96 crop. Transforms
are 2x3 affine matrices ``M`` acting on row points as ``p' = M[:, :2] @ p + M[:, 2]``.
"""

from __future__ import annotations

import numpy as np

from pdsn.model.validation import as_real_array

NUM_LANDMARKS = 5
LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")

TEMPLATE_112X96 = np.array(
    [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ],
    dtype=np.float64,
)
TEMPLATE_112X96.setflags(write=False)

# The insightface 112x112 template is the same face shifted right by 8 pixels.
TEMPLATE_112X112 = TEMPLATE_112X96 + np.array([8.0, 0.0])
TEMPLATE_112X112.setflags(write=False)

# Sanity limits of ``checked_similarity``. Eyes closer than the template's eye distance / 4 would be
# upscaled more than 4x into a blur. A real face fits the template within a few crop pixels (a simple
# 3D head model gives about 9 at 60 degrees of yaw); mirrored or random points give about 20.
# Landmarks may lie slightly outside the image, as detectors extrapolate faces cut by the border.
MAX_UPSCALE = 4.0
MAX_RESIDUAL = 12.0
LANDMARK_MARGIN = 0.1
MAX_OUTSIDE_FRACTION = 1 / 3


def _finite_float_array(value: object, argument: str, expected: str) -> np.ndarray:
    array = as_real_array(value, argument, expected).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{argument} must be finite, got {np.count_nonzero(~np.isfinite(array))} NaN/Inf "
            f"value(s) in an array of shape {array.shape}"
        )
    return array


def _validate_landmarks(landmarks: object, argument: str) -> np.ndarray:
    """Landmarks as float64 (5, 2); a flat sequence of 10 values (x0, y0, x1, ...) is accepted."""
    points = _finite_float_array(landmarks, argument, "5 (x, y) points")
    if points.shape == (2 * NUM_LANDMARKS,):
        points = points.reshape(NUM_LANDMARKS, 2)
    if points.shape != (NUM_LANDMARKS, 2):
        raise ValueError(
            f"{argument} must have shape (5, 2) or (10,) (x, y of {', '.join(LANDMARK_NAMES)}), "
            f"got shape {points.shape}"
        )
    return points


def validate_transform(matrix: object, argument: str = "matrix") -> np.ndarray:
    """Return a finite 2x3 affine matrix as float64."""
    array = _finite_float_array(matrix, argument, "a 2x3 affine matrix")
    if array.shape != (2, 3):
        raise ValueError(f"{argument} must be a 2x3 affine matrix [[a, b, tx], [c, d, ty]], got shape {array.shape}")
    return array


def estimate_similarity(landmarks: object, template: object = TEMPLATE_112X96) -> np.ndarray:
    """Least-squares similarity transform mapping ``landmarks`` onto ``template`` (Umeyama, 1991).

    Returns a 2x3 float64 matrix. The rotation is forced proper (determinant +1), so mirrored
    landmarks give the best rotation rather than a reflection.
    """
    source = _validate_landmarks(landmarks, "landmarks")
    target = _validate_landmarks(template, "template")
    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    source_centered = source - source_mean
    target_centered = target - target_mean
    source_variance = np.mean(np.sum(source_centered**2, axis=1))
    scale_reference = max(1.0, float(np.abs(source).max()))
    if source_variance <= (1e-9 * scale_reference) ** 2:
        raise ValueError(
            "landmarks are degenerate: all 5 points coincide (spread "
            f"{np.sqrt(source_variance):.3g} px), so no alignment exists; check the landmark "
            "detector output"
        )
    covariance = target_centered.T @ source_centered / NUM_LANDMARKS
    u, singular_values, vt = np.linalg.svd(covariance)
    reflection_fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ reflection_fix @ vt
    scale = np.trace(np.diag(singular_values) @ reflection_fix) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: object, points: object) -> np.ndarray:
    """Map points of shape (..., 2) through a 2x3 affine matrix; float64 of the same shape."""
    affine = validate_transform(matrix)
    array = _finite_float_array(points, "points", "an array of (x, y) points")
    if array.ndim == 0 or array.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2) (x, y per point), got shape {array.shape}")
    return array @ affine[:, :2].T + affine[:, 2]


def invert_transform(matrix: object, argument: str = "matrix") -> np.ndarray:
    """Inverse of a 2x3 affine matrix; ValueError if it is singular (e.g. zero scale)."""
    affine = validate_transform(matrix, argument)
    linear = affine[:, :2]
    determinant = np.linalg.det(linear)
    if abs(determinant) <= 1e-12 * max(1.0, float(np.abs(linear).max()) ** 2):
        raise ValueError(
            f"{argument} is singular (determinant {determinant:.3g} of its 2x2 part), so it has no "
            "inverse; a valid alignment transform has a non-zero scale"
        )
    inverse_linear = np.linalg.inv(linear)
    return np.hstack([inverse_linear, (-inverse_linear @ affine[:, 2])[:, None]])


def compose_transforms(first: object, second: object) -> np.ndarray:
    """The 2x3 matrix that applies ``first`` and then ``second``."""
    a = validate_transform(first, "first")
    b = validate_transform(second, "second")
    return np.hstack([b[:, :2] @ a[:, :2], (b[:, :2] @ a[:, 2] + b[:, 2])[:, None]])


def alignment_residual(landmarks: object, matrix: object, template: object = TEMPLATE_112X96) -> float:
    """RMS distance in crop pixels between the mapped landmarks and the template points.

    A large value (several pixels) means the landmarks do not look like a face, e.g. a detector
    failure; callers can reject such faces instead of embedding a badly aligned crop.
    """
    mapped = apply_transform(matrix, _validate_landmarks(landmarks, "landmarks"))
    target = _validate_landmarks(template, "template")
    return float(np.sqrt(np.mean(np.sum((mapped - target) ** 2, axis=1))))


def checked_similarity(
    landmarks: object,
    image_size: tuple[int, int],
    crop_size: tuple[int, int],
    template: object = TEMPLATE_112X96,
    argument: str = "landmarks",
) -> np.ndarray:
    """``estimate_similarity`` for landmarks of an image, refusing those that cannot give a usable crop.

    ``image_size`` and ``crop_size`` are (width, height). Refused, with a ValueError naming the
    problem: a point more than ``LANDMARK_MARGIN`` of the image's larger side outside it; eyes closer
    than the template's eye distance / ``MAX_UPSCALE`` or farther apart than the image is large;
    mirrored points (left and right swapped: the proper similarity cannot fit them); a fit residual
    above ``MAX_RESIDUAL`` crop pixels; more than ``MAX_OUTSIDE_FRACTION`` of the crop off the image.
    """
    points = _validate_landmarks(landmarks, argument)
    target = _validate_landmarks(template, "template")
    width, height = _validate_size(image_size, "image_size")
    crop_width, crop_height = _validate_size(crop_size, "crop_size")
    _check_inside(points, width, height, argument)
    _check_eye_distance(points, target, width, height, argument)
    if _handedness(points) * _handedness(target) < 0:
        raise ValueError(
            f"{argument} are mirrored: left and right are swapped relative to the template. Expected the "
            f"order {', '.join(LANDMARK_NAMES)}, where left is the image's left for an upright face; "
            "swap the eyes and the mouth corners"
        )
    matrix = estimate_similarity(points, target)
    residual = alignment_residual(points, matrix, target)
    # The limit is in 112x96 crop pixels; a template of another scale scales it.
    limit = MAX_RESIDUAL * _eye_distance(target) / _eye_distance(TEMPLATE_112X96)
    if residual > limit:
        raise ValueError(
            f"{argument} do not fit a face: after the best alignment they are {residual:.1f} crop pixels "
            f"(RMS) from the template, at most {limit:.3g} expected; check the landmark detector "
            f"output and the order {', '.join(LANDMARK_NAMES)}"
        )
    outside = _outside_fraction(matrix, width, height, crop_width, crop_height)
    if outside > MAX_OUTSIDE_FRACTION:
        raise ValueError(
            f"{argument} put {outside:.0%} of the aligned crop outside the {width}x{height} (WxH) image, "
            f"at most {MAX_OUTSIDE_FRACTION:.0%} allowed; the face is cut off by the image border"
        )
    return matrix


def _validate_size(size: object, argument: str) -> tuple[int, int]:
    array = as_real_array(size, argument, "(width, height)")
    if array.shape != (2,) or array.dtype.kind not in "iu" or array.min() < 1:
        raise ValueError(f"{argument} must be (width, height) as two positive integers, got {size!r}")
    return int(array[0]), int(array[1])


def _check_inside(points: np.ndarray, width: int, height: int, argument: str) -> None:
    margin = LANDMARK_MARGIN * max(width, height)
    low, high = -0.5 - margin, np.array([width, height]) - 0.5 + margin
    outside = np.flatnonzero(np.any((points < low) | (points > high), axis=1))
    if outside.size:
        named = "; ".join(f"{LANDMARK_NAMES[i]} at ({points[i, 0]:.1f}, {points[i, 1]:.1f})" for i in outside)
        raise ValueError(
            f"{argument}: {named} outside the {width}x{height} (WxH) image (more than {margin:.0f} px "
            "beyond its border); expected pixel coordinates (x, y) of this image"
        )


def _eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[1] - points[0]))


def _check_eye_distance(points: np.ndarray, template: np.ndarray, width: int, height: int, argument: str) -> None:
    distance, template_distance = _eye_distance(points), _eye_distance(template)
    smallest = template_distance / MAX_UPSCALE
    if distance < smallest:
        raise ValueError(
            f"{argument}: the eyes are {distance:.1f} px apart, at least {smallest:.1f} px expected (the crop "
            f"has them {template_distance:.1f} px apart, so this face would be upscaled over "
            f"{MAX_UPSCALE:g}x); the face is too small or the landmarks are degenerate"
        )
    if distance > max(width, height):
        raise ValueError(
            f"{argument}: the eyes are {distance:.0f} px apart, more than the {width}x{height} (WxH) image "
            "is large; expected landmarks of a face inside this image"
        )


def _handedness(points: np.ndarray) -> float:
    """Cross product of (right eye - left eye) and (mouth centre - eye centre); its sign flips in a mirror."""
    across = points[1] - points[0]
    down = points[3:].mean(axis=0) - points[:2].mean(axis=0)
    return float(across[0] * down[1] - across[1] * down[0])


def _outside_fraction(matrix: np.ndarray, width: int, height: int, crop_width: int, crop_height: int) -> float:
    """Share of the crop's pixel centres whose source position falls outside the image."""
    columns, rows = np.meshgrid(np.arange(crop_width), np.arange(crop_height))
    centres = np.stack([columns.ravel(), rows.ravel()], axis=1)
    source = apply_transform(invert_transform(matrix), centres)
    inside = np.all((source >= -0.5) & (source <= np.array([width, height]) - 0.5), axis=1)
    return 1.0 - float(inside.mean())
