"""The 5x5 occlusion grid over the aligned 112x96 face crop (numpy only).

Cells are numbered 0..24 row-major (the paper numbers them 1..25). An occlusion can be given as
cell ids, as a 25-element 0/1 vector (1 = occluded), as a pixel mask of the crop, or as boxes in
crop coordinates or in source-image coordinates mapped through the alignment transform.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable

import numpy as np

from pdsn.errors import InputError, InputTypeError
from pdsn.model.alignment import apply_transform, invert_transform
from pdsn.model.validation import as_real_array

CROP_HEIGHT = 112
CROP_WIDTH = 96
GRID_ROWS = 5
GRID_COLS = 5
NUM_CELLS = GRID_ROWS * GRID_COLS
CELL_X_BOUNDS = (0, 19, 38, 57, 76, 96)
CELL_Y_BOUNDS = (0, 22, 44, 67, 89, 112)

# Named occlusions, 0-based: sunglasses are the paper's cells 11-14, a scarf its bottom row 21-25.
SUNGLASSES_CELLS = (10, 11, 12, 13)
SCARF_CELLS = (20, 21, 22, 23, 24)

# The paper does not say how much of a cell must be covered for it to count as occluded.
DEFAULT_MIN_COVERAGE = 0.5

_CELL_ID_RANGE = "0..24 (row-major over the 5x5 grid; the paper's 1..25 numbering is one higher)"


def grid_for(height: int, width: int) -> dict:
    """The 5x5 grid over a crop of ``height`` x ``width`` pixels, as a contract records it: cell
    boundaries at ``floor(k * size / 5)``, which gives CELL_X_BOUNDS and CELL_Y_BOUNDS at 112x96."""
    return {
        "rows": GRID_ROWS,
        "cols": GRID_COLS,
        "x_bounds": [k * width // GRID_COLS for k in range(GRID_COLS + 1)],
        "y_bounds": [k * height // GRID_ROWS for k in range(GRID_ROWS + 1)],
    }


def check_cell_id(value: object, label: str) -> int:
    """``value`` as an int cell id 0..24, or an error naming ``label``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(
            label, f"{label} must be an integer cell id {_CELL_ID_RANGE}, got {value!r} of type {type(value).__name__}"
        )
    if not 0 <= value < NUM_CELLS:
        raise InputError(label, f"{label} is {value}, expected a cell id in {_CELL_ID_RANGE}")
    return int(value)


def cell_bounds(cell: int, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)) -> tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1) of a cell of the grid over a crop of ``size`` (height, width),
    half-open: x0 <= x < x1, y0 <= y < y1."""
    row, col = divmod(check_cell_id(cell, "cell"), GRID_COLS)
    grid = grid_for(*size)
    x_bounds, y_bounds = grid["x_bounds"], grid["y_bounds"]
    return x_bounds[col], y_bounds[row], x_bounds[col + 1], y_bounds[row + 1]


def validate_cell_ids(cells: Iterable[int], argument: str = "cells") -> list[int]:
    """Check a collection of distinct cell ids 0..24 and return them sorted."""
    if (
        isinstance(cells, (str, bytes))
        or not isinstance(cells, Iterable)
        or (isinstance(cells, np.ndarray) and cells.ndim != 1)
    ):
        raise InputTypeError(
            argument,
            f"{argument} must be a flat collection of integer cell ids {_CELL_ID_RANGE}, got "
            f"{type(cells).__name__} {cells!r}; wrap a single id in a list, e.g. [12]",
        )
    ids = [check_cell_id(value, f"{argument}[{index}]") for index, value in enumerate(cells)]
    duplicates = sorted(cell for cell, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise InputError(
            argument,
            f"{argument} lists cell id(s) {duplicates} more than once; cell ids must be unique. "
            "If this is a 25-element 0/1 occlusion vector, pass it as a numpy array "
            "(validate_occlusion_vectors), not as a list of cell ids",
        )
    return sorted(ids)


def cells_to_vector(cells: Iterable[int], argument: str = "cells") -> np.ndarray:
    """Cell ids -> float32 occlusion vector of shape (25,), 1.0 where occluded."""
    vector = np.zeros(NUM_CELLS, dtype=np.float32)
    vector[validate_cell_ids(cells, argument)] = 1.0
    return vector


def _require_zero_one(array: np.ndarray, argument: str, axis_names: tuple[str, ...], meaning: str) -> None:
    """Raise naming the first entry (and the count of entries) that is not exactly 0 or 1."""
    bad = ~((array == 0) | (array == 1))
    if not bad.any():
        return
    index = np.argwhere(bad)[0]
    where = ", ".join(f"{name} {int(i)}" for name, i in zip(axis_names, index))
    raise InputError(
        argument,
        f"{argument}[{where}] is {array[tuple(index)].item()!r}; every entry must be exactly "
        f"0 or 1 ({meaning}), found {int(bad.sum())} other value(s). Threshold or round the "
        "values first",
    )


def validate_occlusion_vectors(vectors: object, argument: str = "occlusion") -> np.ndarray:
    """Check one (25,) or a batch (N, 25) of 0/1 occlusion vectors; returns float32 (N, 25)."""
    array = as_real_array(vectors, argument, "a 25-element 0/1 vector or an (N, 25) array")
    if array.ndim == 1 and array.shape[0] == NUM_CELLS:
        _require_zero_one(array, argument, ("cell",), "1 = cell occluded")
        return array.astype(np.float32)[None]
    if array.ndim == 2 and array.shape[1] == NUM_CELLS:
        _require_zero_one(array, argument, ("row", "column"), "1 = cell occluded")
        return array.astype(np.float32)
    raise InputError(
        argument,
        f"{argument} vector must have 25 entries (one per 5x5 grid cell), got shape "
        f"{array.shape}; pass shape (25,) for one face or (N, 25) for a batch",
    )


def coverage_from_mask(mask: object, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)) -> np.ndarray:
    """Fraction of each cell's pixels that are set in a crop mask of ``size`` (height, width); float64 (25,)."""
    height, width = size
    array = as_real_array(mask, "mask", f"a ({height}, {width}) 0/1 crop mask")
    if array.shape != (height, width):
        raise ValueError(
            f"mask must have shape ({height}, {width}) (rows x columns of the aligned "
            f"crop), got shape {array.shape}; map boxes with boxes_to_mask or align the image first"
        )
    _require_zero_one(array, "mask", ("y", "x"), "1 = pixel occluded")
    grid = grid_for(height, width)
    y_bounds, x_bounds = grid["y_bounds"], grid["x_bounds"]
    per_row_band = np.add.reduceat(array.astype(np.float64), y_bounds[:-1], axis=0)
    counts = np.add.reduceat(per_row_band, x_bounds[:-1], axis=1)
    areas = np.outer(np.diff(y_bounds), np.diff(x_bounds))
    return (counts / areas).reshape(NUM_CELLS)


def _validate_boxes(boxes: object) -> np.ndarray:
    array = as_real_array(boxes, "boxes", "a (4,) or (K, 4) array of x0, y0, x1, y1")
    if array.shape == (4,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (4,) or (K, 4) as x0, y0, x1, y1, got shape {array.shape}")
    array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueError(f"boxes[{index}] = {array[index].tolist()} has a NaN or infinite coordinate")
    empty = (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])
    if empty.any():
        index = int(np.argmax(empty))
        raise ValueError(
            f"boxes[{index}] = {array[index].tolist()} is empty or inverted; each box is "
            "x0, y0, x1, y1 with x1 > x0 and y1 > y0 (corners, not x, y, width, height)"
        )
    return array


def boxes_to_mask(boxes: object, transform: object | None = None) -> np.ndarray:
    """Rasterise boxes into a bool (112, 96) crop mask at pixel centres.

    Without ``transform`` the boxes are in crop pixels. With ``transform`` (the 2x3 alignment matrix
    mapping source-image coordinates to crop coordinates) they are in source-image pixels: each crop
    pixel centre is mapped back into the source image and tested against the boxes there, which is
    exact for rotated alignments at pixel resolution.
    """
    box_array = _validate_boxes(boxes)
    rows, cols = np.mgrid[0:CROP_HEIGHT, 0:CROP_WIDTH]
    if transform is None:
        centres = np.stack([cols + 0.5, rows + 0.5], axis=-1)
    else:
        # Alignment matrices use integer pixel centres, as the landmark template does; boxes use
        # continuous coordinates in which pixel k spans [k, k + 1).
        inverse = invert_transform(transform, "transform")
        centres = apply_transform(inverse, np.stack([cols, rows], axis=-1).astype(np.float64)) + 0.5
    x = centres[..., 0, None]
    y = centres[..., 1, None]
    x0, y0, x1, y1 = box_array.T
    return ((x0 <= x) & (x < x1) & (y0 <= y) & (y < y1)).any(axis=-1)


def cells_from_mask(
    mask: object, min_coverage: float = DEFAULT_MIN_COVERAGE, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)
) -> np.ndarray:
    """Float32 (25,) occlusion vector: 1 where at least ``min_coverage`` of a cell of a crop mask of
    ``size`` (height, width) is set."""
    expected = "a number in (0, 1] (the fraction of a cell that must be covered to count)"
    if isinstance(min_coverage, bool) or not isinstance(min_coverage, numbers.Real):
        raise TypeError(f"min_coverage must be {expected}, got {type(min_coverage).__name__} {min_coverage!r}")
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be {expected}, got {min_coverage!r}")
    return (coverage_from_mask(mask, size) >= min_coverage).astype(np.float32)


def cells_from_boxes(
    boxes: object, min_coverage: float = DEFAULT_MIN_COVERAGE, transform: object | None = None
) -> np.ndarray:
    """Float32 (25,) occlusion vector from boxes; see boxes_to_mask for ``transform``."""
    return cells_from_mask(boxes_to_mask(boxes, transform), min_coverage)
