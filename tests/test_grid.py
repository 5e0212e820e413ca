import numpy as np
import pytest

from pdsn.model.alignment import TEMPLATE_112X96, apply_transform, estimate_similarity
from pdsn.model.grid import (
    CELL_X_BOUNDS,
    CELL_Y_BOUNDS,
    CROP_HEIGHT,
    CROP_WIDTH,
    NUM_CELLS,
    SCARF_CELLS,
    SUNGLASSES_CELLS,
    boxes_to_mask,
    cell_bounds,
    cells_from_boxes,
    cells_from_mask,
    cells_to_vector,
    coverage_from_mask,
    validate_cell_ids,
    validate_occlusion_vectors,
)
from pdsn.model.occlusion import Occlusion

BATCH_INDEX = np.arange(2 * NUM_CELLS).reshape(2, NUM_CELLS)
CROP_INDEX = np.arange(CROP_HEIGHT * CROP_WIDTH).reshape(CROP_HEIGHT, CROP_WIDTH)


def cells_of_vector(vector: np.ndarray) -> list[int]:
    return list(Occlusion.from_vector(vector).cells)


def test_cell_bounds_tile_the_crop_exactly() -> None:
    painted = np.zeros((CROP_HEIGHT, CROP_WIDTH), dtype=int)
    for cell in range(NUM_CELLS):
        x0, y0, x1, y1 = cell_bounds(cell)
        assert x1 > x0 and y1 > y0
        painted[y0:y1, x0:x1] += 1
    np.testing.assert_array_equal(painted, 1)
    assert cell_bounds(0) == (0, 0, 19, 22)
    assert cell_bounds(7) == (38, 22, 57, 44)
    assert cell_bounds(24) == (76, 89, 96, 112)
    assert CELL_X_BOUNDS[-1] == CROP_WIDTH and CELL_Y_BOUNDS[-1] == CROP_HEIGHT


def test_named_cell_groups() -> None:
    assert {cell_bounds(cell)[1] for cell in SUNGLASSES_CELLS} == {44}
    assert {cell_bounds(cell)[3] for cell in SCARF_CELLS} == {112}
    assert len(SCARF_CELLS) == 5


def test_ids_vector_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        count = rng.integers(0, NUM_CELLS + 1)
        ids = sorted(rng.choice(NUM_CELLS, size=count, replace=False).tolist())
        vector = cells_to_vector(ids)
        assert vector.dtype == np.float32 and vector.shape == (NUM_CELLS,)
        assert vector.sum() == len(ids)
        assert cells_of_vector(vector) == ids
    assert cells_of_vector(np.zeros(NUM_CELLS, dtype=bool)) == []


def test_validate_cell_ids_accepts_any_int_iterable_and_sorts() -> None:
    assert validate_cell_ids((13, np.int64(10), np.uint8(11))) == [10, 11, 13]
    assert validate_cell_ids(cell for cell in SCARF_CELLS) == list(SCARF_CELLS)
    assert validate_cell_ids(np.array([3, 1])) == [1, 3]
    assert validate_cell_ids({4}) == [4]
    assert validate_cell_ids([]) == []


@pytest.mark.parametrize(
    ("cells", "error", "message"),
    [
        ([25], ValueError, r"cells\[0\] is 25, expected a cell id in 0\.\.24"),
        ([3, -1], ValueError, r"cells\[1\] is -1"),
        ([3.0], TypeError, r"cells\[0\] must be an integer cell id.*float"),
        ([True], TypeError, "bool"),
        ([np.float32(2)], TypeError, "float32"),
        (["3"], TypeError, "str"),
        ("12", TypeError, "wrap a single id in a list"),
        (12, TypeError, "wrap a single id in a list"),
        (np.zeros((2, 2), dtype=int), TypeError, "flat collection"),
        ([1, 2, 1], ValueError, r"\[1\] more than once.*numpy array"),
        ([0] * 20 + [1] * 5, ValueError, "0/1 occlusion vector, pass it as a numpy array"),
    ],
)
def test_bad_cell_ids_rejected(cells: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        validate_cell_ids(cells)


def test_cell_bounds_rejects_bad_ids() -> None:
    with pytest.raises(ValueError, match="cell is 25"):
        cell_bounds(25)
    with pytest.raises(TypeError):
        cell_bounds(True)


def test_validate_occlusion_vectors_shapes_and_types() -> None:
    single = validate_occlusion_vectors(cells_to_vector([3]))
    assert single.shape == (1, NUM_CELLS) and single.dtype == np.float32
    batch = validate_occlusion_vectors(np.eye(NUM_CELLS, dtype=bool)[:4])
    assert batch.shape == (4, NUM_CELLS) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.eye(NUM_CELLS)[:4])
    assert validate_occlusion_vectors([0] * NUM_CELLS).shape == (1, NUM_CELLS)
    assert validate_occlusion_vectors(np.zeros((0, NUM_CELLS))).shape == (0, NUM_CELLS)


@pytest.mark.parametrize(
    ("vectors", "error", "message"),
    [
        (
            np.zeros(24),
            ValueError,
            r"occlusion vector must have 25 entries \(one per 5x5 grid cell\), got shape \(24,\)",
        ),
        (np.zeros((2, 24)), ValueError, r"got shape \(2, 24\)"),
        (np.zeros((1, 1, 25)), ValueError, r"got shape \(1, 1, 25\)"),
        (
            np.r_[np.zeros(24), 0.5],
            ValueError,
            r"occlusion\[cell 24\] is 0\.5; every entry must be exactly 0 or 1",
        ),
        (np.where(BATCH_INDEX == 31, np.nan, 0.0), ValueError, r"\[row 1, column 6\] is nan"),
        (np.where(BATCH_INDEX == 7, 2, 0), ValueError, r"\[row 0, column 7\] is 2"),
        (np.array(["0"] * 25), TypeError, "dtype"),
        ([[0] * 25, [0] * 24], ValueError, "ragged"),
    ],
)
def test_bad_occlusion_vectors_rejected(vectors: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        validate_occlusion_vectors(vectors)


def test_an_occlusion_from_a_vector_wants_one_vector() -> None:
    with pytest.raises(ValueError, match="expected one vector of 25 entries, got 2 rows"):
        Occlusion.from_vector(np.zeros((2, NUM_CELLS)))


@pytest.mark.parametrize("cell", range(NUM_CELLS))
def test_box_equal_to_a_cell_covers_only_that_cell(cell: int) -> None:
    coverage = coverage_from_mask(boxes_to_mask(cell_bounds(cell)))
    assert coverage.dtype == np.float64
    np.testing.assert_array_equal(coverage, np.eye(NUM_CELLS)[cell])
    np.testing.assert_array_equal(cells_from_boxes(cell_bounds(cell), min_coverage=1.0), cells_to_vector([cell]))


def test_half_covered_cell_and_min_coverage() -> None:
    top_half_of_cell_0 = [0, 0, 19, 11]  # 19 x 11 of the cell's 19 x 22 pixels
    assert coverage_from_mask(boxes_to_mask(top_half_of_cell_0))[0] == 0.5
    assert cells_of_vector(cells_from_boxes(top_half_of_cell_0)) == [0]
    assert cells_of_vector(cells_from_boxes(top_half_of_cell_0, min_coverage=0.51)) == []
    left_part_of_cell_12 = [38, 44, 47, 67]  # 9 of 19 columns
    assert coverage_from_mask(boxes_to_mask(left_part_of_cell_12))[12] == pytest.approx(9 / 19)
    assert cells_of_vector(cells_from_boxes(left_part_of_cell_12, min_coverage=0.45)) == [12]
    assert cells_of_vector(cells_from_boxes(left_part_of_cell_12)) == []


def test_sunglasses_and_scarf_boxes() -> None:
    sunglasses = [CELL_X_BOUNDS[0], CELL_Y_BOUNDS[2], CELL_X_BOUNDS[4], CELL_Y_BOUNDS[3]]
    assert cells_of_vector(cells_from_boxes(sunglasses)) == list(SUNGLASSES_CELLS)
    scarf = [[0, 89, 50, 112], [40.5, 94, 96, 112]]  # union of overlapping boxes
    assert cells_of_vector(cells_from_boxes(scarf, min_coverage=0.75)) == list(SCARF_CELLS)


def test_boxes_rasterise_at_pixel_centres() -> None:
    # Neither row centre 20.5 nor 21.5 lies in [20.6, 21.4), although the box overlaps both rows.
    assert not boxes_to_mask([10.4, 20.6, 12.6, 21.4]).any()
    mask = boxes_to_mask([10.4, 20.4, 12.6, 21.6])
    expected = [[y, x] for y in (20, 21) for x in (10, 11, 12)]
    np.testing.assert_array_equal(np.argwhere(mask), expected)
    assert not boxes_to_mask(np.zeros((0, 4))).any()
    assert boxes_to_mask([-50, -50, 500, 500]).all()


def test_cells_from_mask_thresholds_like_boxes() -> None:
    mask = np.zeros((CROP_HEIGHT, CROP_WIDTH), dtype=np.uint8)
    mask[0:22, 0:10] = 1
    np.testing.assert_array_equal(cells_from_mask(mask), cells_to_vector([0]))
    assert not cells_from_mask(mask.astype(bool), min_coverage=0.6).any()


def test_rotated_90_degree_transform() -> None:
    # crop x = source y - 10, crop y = 150 - source x: a proper 90-degree rotation plus shift.
    transform = np.array([[0.0, 1.0, -10.0], [-1.0, 0.0, 150.0]])
    source_box = [50, 20, 100, 48]
    # The transform acts on integer pixel centres: source pixel centres inside the box are
    # x in [49.5, 99.5), y in [19.5, 47.5). Crop row r sees source x = 150 - r, so rows 51..100;
    # crop column c sees source y = c + 10, so columns 10..37.
    expected = np.zeros((CROP_HEIGHT, CROP_WIDTH), dtype=bool)
    expected[51:101, 10:38] = True
    np.testing.assert_array_equal(boxes_to_mask(source_box, transform), expected)


def _inside_forward_mapped_box(box: list[float], transform: np.ndarray) -> np.ndarray:
    """Independent expectation: map the box corners forward, test pixel centres in the quad.

    The transform works in integer-pixel-centre coordinates (as landmarks do) while box corners are
    continuous (pixel k spans [k, k + 1)), so corners shift by -0.5 and crop pixel centres are the
    integer indices.
    """
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) - 0.5
    quad = apply_transform(transform, corners)
    rows, cols = np.mgrid[0:CROP_HEIGHT, 0:CROP_WIDTH]
    centres = np.stack([cols, rows], axis=-1).astype(np.float64)
    sides = []
    for k in range(4):
        edge = quad[(k + 1) % 4] - quad[k]
        offset = centres - quad[k]
        sides.append(edge[0] * offset[..., 1] - edge[1] * offset[..., 0])
    sides = np.stack(sides)
    return np.all(sides > 0, axis=0) | np.all(sides < 0, axis=0)


def test_rotated_similarity_from_alignment_matches_forward_mapping() -> None:
    angle = np.deg2rad(17.0)
    forward = 2.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = TEMPLATE_112X96 @ forward.T + [301.3, 87.9]
    transform = estimate_similarity(landmarks)
    box = [330.3, 310.1, 410.7, 370.2]
    mask = boxes_to_mask(box, transform)
    assert 200 < mask.sum() < mask.size - 200
    np.testing.assert_array_equal(mask, _inside_forward_mapped_box(box, transform))
    coverage = coverage_from_mask(mask)
    np.testing.assert_array_equal(cells_from_boxes(box, 0.3, transform), coverage >= 0.3)


@pytest.mark.parametrize(
    ("boxes", "error", "message"),
    [
        ([1, 2, 3], ValueError, r"boxes must have shape \(4,\) or \(K, 4\).*got shape \(3,\)"),
        ([[1, 2, 3, 4, 5]], ValueError, r"got shape \(1, 5\)"),
        (
            [[0, 0, 5, 5], [10, 10, 10, 20]],
            ValueError,
            r"boxes\[1\] = \[10\.0, 10\.0, 10\.0, 20\.0\] is empty or inverted",
        ),
        ([10, 10, 5, 20], ValueError, "not x, y, width, height"),
        ([0, np.nan, 5, 5], ValueError, "NaN or infinite"),
        ([["a", "b", "c", "d"]], TypeError, "dtype"),
    ],
)
def test_bad_boxes_rejected(boxes: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        boxes_to_mask(boxes)


def test_bad_transform_rejected() -> None:
    with pytest.raises(ValueError, match="transform is singular"):
        boxes_to_mask([0, 0, 5, 5], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"transform must be a 2x3 affine matrix"):
        boxes_to_mask([0, 0, 5, 5], np.eye(3))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((96, 112)), r"mask must have shape \(112, 96\).*got shape \(96, 112\)"),
        (np.zeros((112, 96, 1)), r"got shape \(112, 96, 1\)"),
        (np.where(CROP_INDEX == 96 * 3 + 4, 0.3, 0.0), r"mask\[y 3, x 4\] is 0\.3"),
    ],
)
def test_bad_masks_rejected(mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coverage_from_mask(mask)


@pytest.mark.parametrize(
    ("min_coverage", "error"),
    [
        (0.0, ValueError),
        (1.5, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        ("0.5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_min_coverage_rejected(min_coverage: object, error: type) -> None:
    with pytest.raises(error, match=r"min_coverage must be a number in \(0, 1\]"):
        cells_from_boxes([0, 0, 19, 22], min_coverage=min_coverage)
