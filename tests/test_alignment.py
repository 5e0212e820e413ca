import numpy as np
import pytest

from pdsn.model.alignment import (
    TEMPLATE_112X96,
    TEMPLATE_112X112,
    alignment_residual,
    apply_transform,
    checked_similarity,
    compose_transforms,
    estimate_similarity,
    invert_transform,
)


def similarity(angle_degrees: float, scale: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(angle_degrees)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[cos, -sin, tx], [sin, cos, ty]])


def test_templates() -> None:
    assert TEMPLATE_112X96.shape == (5, 2)
    assert TEMPLATE_112X96.dtype == np.float64
    np.testing.assert_array_equal(TEMPLATE_112X96[2], [48.0252, 71.7366])
    np.testing.assert_allclose(TEMPLATE_112X112 - TEMPLATE_112X96, [[8.0, 0.0]] * 5)
    with pytest.raises(ValueError):
        TEMPLATE_112X96[0, 0] = 0.0


def test_estimate_recovers_inverse_of_known_similarity() -> None:
    forward = similarity(10.0, 1.7, 123.4, -56.7)
    landmarks = apply_transform(forward, TEMPLATE_112X96)
    estimated = estimate_similarity(landmarks)
    np.testing.assert_allclose(estimated, invert_transform(forward), rtol=0, atol=1e-9)
    np.testing.assert_allclose(apply_transform(estimated, landmarks), TEMPLATE_112X96, atol=1e-9)
    assert alignment_residual(landmarks, estimated) < 1e-9


def test_estimate_accepts_flat_landmarks_and_other_template() -> None:
    forward = similarity(-25.0, 0.4, 10.0, 20.0)
    landmarks = apply_transform(forward, TEMPLATE_112X112)
    flat = [float(v) for v in landmarks.reshape(-1)]
    estimated = estimate_similarity(flat, TEMPLATE_112X112)
    np.testing.assert_allclose(estimated, invert_transform(forward), atol=1e-9)


def test_estimate_is_least_squares_for_noisy_landmarks() -> None:
    rng = np.random.default_rng(0)
    landmarks = apply_transform(similarity(5.0, 2.0, 30.0, 40.0), TEMPLATE_112X96)
    landmarks = landmarks + rng.normal(0.0, 1.0, landmarks.shape)
    estimated = estimate_similarity(landmarks)
    best = alignment_residual(landmarks, estimated)
    assert 0 < best < 2.0
    # Any nearby similarity (a, b, tx, ty) -> [[a, -b, tx], [b, a, ty]] fits worse.
    directions = [
        [[1, 0, 0], [0, 1, 0]],
        [[0, -1, 0], [1, 0, 0]],
        [[0, 0, 1], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 1]],
    ]
    for direction in np.array(directions, dtype=np.float64) * 1e-4:
        assert alignment_residual(landmarks, estimated + direction) > best
        assert alignment_residual(landmarks, estimated - direction) > best


def test_mirrored_landmarks_do_not_produce_a_reflection() -> None:
    mirrored = TEMPLATE_112X96 * [-1.0, 1.0] + [200.0, 0.0]
    estimated = estimate_similarity(mirrored)
    assert np.linalg.det(estimated[:, :2]) > 0
    assert alignment_residual(mirrored, estimated) > 1.0


def test_invert_apply_and_compose_round_trip() -> None:
    forward = similarity(33.0, 0.8, -4.0, 9.5)
    points = np.random.default_rng(1).uniform(-100, 100, (3, 4, 2))
    back = apply_transform(invert_transform(forward), apply_transform(forward, points))
    np.testing.assert_allclose(back, points, atol=1e-9)
    identity = compose_transforms(forward, invert_transform(forward))
    np.testing.assert_allclose(identity, np.eye(2, 3), atol=1e-12)
    second = similarity(-70.0, 3.0, 1.0, 2.0)
    np.testing.assert_allclose(
        apply_transform(compose_transforms(forward, second), points),
        apply_transform(second, apply_transform(forward, points)),
        atol=1e-9,
    )


def test_degenerate_landmarks_rejected() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.full((5, 2), 42.0))


@pytest.mark.parametrize(
    ("landmarks", "error", "message"),
    [
        (np.zeros((4, 2)), ValueError, r"shape \(5, 2\) or \(10,\).*got shape \(4, 2\)"),
        (np.zeros(9), ValueError, r"got shape \(9,\)"),
        ([[1.0, 2.0]] * 4 + [[np.nan, 1.0]], ValueError, "finite"),
        ([["a", "b"]] * 5, TypeError, "dtype"),
        ([[1.0, 2.0], [3.0]], ValueError, "ragged"),
    ],
)
def test_bad_landmarks_rejected(landmarks: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        estimate_similarity(landmarks)


def test_bad_matrices_rejected() -> None:
    with pytest.raises(ValueError, match="singular"):
        invert_transform([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]])
    with pytest.raises(ValueError, match=r"2x3 affine matrix.*got shape \(3, 3\)"):
        invert_transform(np.eye(3))
    with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., 2\)"):
        apply_transform(np.eye(2, 3), np.zeros((4, 3)))


CROP = (96, 112)


def test_checked_similarity_accepts_plausible_faces() -> None:
    rotated = apply_transform(similarity(-30.0, 2.5, 150.0, 20.0), TEMPLATE_112X96)
    np.testing.assert_array_equal(checked_similarity(rotated, (400, 400), CROP), estimate_similarity(rotated))
    upside_down = apply_transform(similarity(180.0, 1.0, 150.0, 170.0), TEMPLATE_112X96)
    checked_similarity(upside_down, (200, 200), CROP)
    # An aligned crop itself, as flat (x0, y0, x1, ...) landmarks with detector noise.
    noisy = TEMPLATE_112X96 + np.random.default_rng(2).normal(0.0, 2.0, (5, 2))
    checked_similarity(noisy.reshape(-1).tolist(), CROP, CROP)
    # A face cut by the border: the mouth corner slightly outside (within 10% of 400 px) is accepted.
    near_edge = TEMPLATE_112X96 * 3.0 + [100.0, 130.0]
    assert near_edge[3:, 1].max() > 400
    checked_similarity(near_edge, (400, 400), CROP)


@pytest.mark.parametrize(
    ("landmarks", "size", "message"),
    [
        (TEMPLATE_112X96 + [-200.0, 0.0], (200, 200), r"landmarks: left eye at \(-169\.7, 51\.7\); right eye"),
        (TEMPLATE_112X96 * 8.0, (200, 200), r"right eye at \(524\.3, 412\.0\).*outside the 200x200 \(WxH\) image"),
        (np.full((5, 2), 42.0), (200, 200), r"eyes are 0\.0 px apart, at least 8\.8 px expected"),
        (
            [[-10.0, -10.0], [210.0, 210.0], [100.0, 100.0], [20.0, 180.0], [60.0, 190.0]],
            (200, 200),
            r"eyes are 311 px apart, more than the 200x200 \(WxH\) image is large",
        ),
        (TEMPLATE_112X96[[1, 0, 2, 4, 3]] + 50.0, (200, 200), "mirrored: left and right are swapped"),
        (TEMPLATE_112X96 * [1.0, -1.0] + [50.0, 150.0], (200, 200), "mirrored"),
        (np.vstack([TEMPLATE_112X96[:2], [48.0, 0.0], TEMPLATE_112X96[3:]]) + 100.0, (200, 200), "do not fit a face"),
        (TEMPLATE_112X96 + [100.0, -46.0], (200, 200), r"put 4\d% of the aligned crop outside the 200x200"),
    ],
)
def test_checked_similarity_refuses_unusable_landmarks(landmarks: object, size: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checked_similarity(landmarks, size, CROP)


def test_checked_similarity_validates_sizes_and_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"image_size must be \(width, height\) as two positive integers"):
        checked_similarity(TEMPLATE_112X96, (0, 100), CROP)
    with pytest.raises(ValueError, match="crop_size must be"):
        checked_similarity(TEMPLATE_112X96, (100, 100), (96.0, 112.0))
    with pytest.raises(ValueError, match=r"^landmarks\[3\] are mirrored"):
        checked_similarity(TEMPLATE_112X96 * [-1.0, 1.0] + [100.0, 0.0], (200, 200), CROP, argument="landmarks[3]")
