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
        raise ValueError(
            f"{argument} must be a 2x3 affine matrix [[a, b, tx], [c, d, ty]], "
            f"got shape {array.shape}"
        )
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
        raise ValueError(
            f"points must have shape (..., 2) (x, y per point), got shape {array.shape}"
        )
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


def alignment_residual(
    landmarks: object, matrix: object, template: object = TEMPLATE_112X96
) -> float:
    """RMS distance in crop pixels between the mapped landmarks and the template points.

    A large value (several pixels) means the landmarks do not look like a face, e.g. a detector
    failure; callers can reject such faces instead of embedding a badly aligned crop.
    """
    mapped = apply_transform(matrix, _validate_landmarks(landmarks, "landmarks"))
    target = _validate_landmarks(template, "template")
    return float(np.sqrt(np.mean(np.sum((mapped - target) ** 2, axis=1))))
