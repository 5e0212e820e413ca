"""Area resampling from an integral image: the pyramid levels and the box crops, as the nets take them.

facenet-pytorch resamples with PyTorch's ``interpolate(mode="area")``, which is adaptive average
pooling: output row i averages input rows floor(i * in / out) up to (not including)
ceil((i + 1) * in / out), likewise for columns, also when enlarging. With an integral image (exact
integer sums of the uint8 pixels) every output pixel is four look-ups, whatever the scale, so one
integral image serves every pyramid level and every crop. The average is taken as PyTorch's CPU
kernel takes it, ``sum / kh / kw`` in float32, then normalised with the contract's constants.
"""

from __future__ import annotations

import numpy as np

from pdsn.model.detector_contract import PIXEL_MEAN, PIXEL_SCALE

LEVEL_ROWS = 128
_MEAN = np.float32(PIXEL_MEAN)
_SCALE = np.float32(PIXEL_SCALE)


def integral_image(image: np.ndarray) -> np.ndarray:
    """S (H + 1, W + 1, 3): S[r, c] is the sum of ``image[:r, :c]``, modulo 2**32 while the whole image's
    sum stays below it (up to 16.8 megapixels), else exact in int64.

    Every sum taken from it is a difference of its entries, and a box's true sum is below 2**32, so the
    wrapped uint32 differences are exact: half the memory of int64, which dominates detection's.
    """
    height, width = image.shape[:2]
    dtype = np.uint32 if 255 * height * width < 2**32 else np.int64
    total = np.zeros((height + 1, width + 1, 3), dtype=dtype)
    total[1:, 1:] = image
    # In place over the whole array (the zero row and column included) is much faster than on a view.
    np.cumsum(total, axis=0, dtype=dtype, out=total)
    np.cumsum(total, axis=1, dtype=dtype, out=total)
    return total


def pooling_bounds(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling's [first, last) input indices of each of ``size`` outputs, for spans (start, length).

    ``start`` and ``length`` are (n,) int arrays; the results are (n, size), offset by ``start``.
    """
    i = np.arange(size, dtype=np.int64)
    length = length.astype(np.int64)[:, None]
    first = (i * length) // size
    last = ((i + 1) * length + size - 1) // size
    offset = start.astype(np.int64)[:, None]
    return first + offset, last + offset


def pyramid_level(total: np.ndarray, height: int, width: int) -> np.ndarray:
    """The whole image area-resampled to ``height`` x ``width``, normalised, float32 (1, 3, height, width).

    Computed ``LEVEL_ROWS`` output rows at a time, so its temporaries stay small beside the integral image.
    """
    rows = pooling_bounds(np.zeros(1), np.array([total.shape[0] - 1]), height)
    cols = pooling_bounds(np.zeros(1), np.array([total.shape[1] - 1]), width)
    (r0,), (r1,) = rows
    (c0,), (c1,) = cols
    counts_r = (r1 - r0).astype(np.float32)[:, None, None]
    counts_c = (c1 - c0).astype(np.float32)[None, :, None]
    level = np.empty((height, width, 3), np.float32)
    for start in range(0, height, LEVEL_ROWS):
        part = slice(start, start + LEVEL_ROWS)
        strips = np.take(total, r1[part], axis=0) - np.take(total, r0[part], axis=0)
        sums = np.take(strips, c1, axis=1) - np.take(strips, c0, axis=1)
        level[part] = _normalised(sums, counts_r[part], counts_c)
    return level.transpose(2, 0, 1)[None]


def crops(total: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box's pixels area-resampled to ``size`` x ``size``: float32 (n, 3, size, size), normalised.

    ``boxes`` is int (n, 4): first row, row end, first column, column end (0-based, end exclusive),
    all within the image and non-empty.
    """
    r0, r1 = pooling_bounds(boxes[:, 0], boxes[:, 1] - boxes[:, 0], size)
    c0, c1 = pooling_bounds(boxes[:, 2], boxes[:, 3] - boxes[:, 2], size)
    stride = total.shape[1]
    flat = total.reshape(-1, 3)
    top, bottom = r0[:, :, None] * stride, r1[:, :, None] * stride
    left, right = c0[:, None, :], c1[:, None, :]
    sums = np.take(flat, bottom + right, axis=0)
    sums -= np.take(flat, bottom + left, axis=0)
    sums -= np.take(flat, top + right, axis=0)
    sums += np.take(flat, top + left, axis=0)
    counts_r = (r1 - r0).astype(np.float32)[:, :, None, None]
    counts_c = (c1 - c0).astype(np.float32)[:, None, :, None]
    return np.ascontiguousarray(_normalised(sums, counts_r, counts_c).transpose(0, 3, 1, 2))


def _normalised(sums: np.ndarray, counts_r: np.ndarray, counts_c: np.ndarray) -> np.ndarray:
    average = sums.astype(np.float32) / counts_r / counts_c
    average -= _MEAN
    average *= _SCALE
    return average
