"""Box arithmetic of the MTCNN cascade, in float32 as facenet-pytorch does it, so the results agree.

Boxes are float32 (n, 4) x1, y1, x2, y2 in pixels. Two non-maximum suppressions: ``nms_union`` as
torchvision's ``nms`` (areas without +1, a box is dropped when its IoU with a kept one exceeds the
limit) and ``nms_min`` as facenet-pytorch's last stage (areas with +1, overlap over the smaller box,
dropped above the limit). Both return the kept indices, highest score first.
"""

from __future__ import annotations

import numpy as np

from pdsn.model.detector_contract import PNET_STRIDE, PNET_WINDOW

_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


def pnet_candidates(
    regression: np.ndarray, probability: np.ndarray, scale: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P-Net cells at or above ``threshold`` as image boxes: (boxes (n, 4), scores (n,), regression (n, 4)).

    ``regression`` is (4, H', W') and ``probability`` (H', W') of one pyramid level at ``scale``.
    """
    rows, cols = np.nonzero(probability >= np.float32(threshold))
    cells = np.stack([cols, rows], axis=1).astype(np.float32)
    scale32 = np.float32(scale)
    first = np.floor((PNET_STRIDE * cells + _ONE) / scale32)
    last = np.floor((PNET_STRIDE * cells + np.float32(PNET_WINDOW)) / scale32)
    boxes = np.concatenate([first, last], axis=1)
    return boxes, probability[rows, cols], regression[:, rows, cols].T


def nms_union(boxes: np.ndarray, scores: np.ndarray, limit: float) -> np.ndarray:
    """torchvision ``nms``: kept indices by decreasing score (ties: lower index first)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # torchvision compares the float32 IoU with the limit as a double.
    return _greedy(boxes, area, np.argsort(-scores, kind="stable"), np.float64(limit), union=True)


def nms_min(boxes: np.ndarray, scores: np.ndarray, limit: float) -> np.ndarray:
    """facenet-pytorch's "Min" NMS: overlap over the smaller box, areas counted with +1 pixel."""
    area = (boxes[:, 2] - boxes[:, 0] + _ONE) * (boxes[:, 3] - boxes[:, 1] + _ONE)
    # facenet-pytorch compares in numpy, float32 against a Python float: in float32.
    return _greedy(boxes, area, np.argsort(-scores, kind="stable"), np.float32(limit), union=False)


def _greedy(boxes: np.ndarray, area: np.ndarray, order: np.ndarray, limit: np.floating, union: bool) -> np.ndarray:
    """Keep the first of ``order``, drop those overlapping it above ``limit``, repeat. Union: IoU with
    areas as given and no +1 in the intersection; otherwise overlap over the smaller area, +1."""
    x1, y1, x2, y2 = boxes.T
    extra = np.float32(0.0) if union else _ONE
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        width = np.maximum(np.float32(0.0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + extra)
        height = np.maximum(np.float32(0.0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + extra)
        inter = width * height
        overlap = inter / (area[i] + area[rest] - inter) if union else inter / np.minimum(area[i], area[rest])
        order = rest[overlap <= limit]
    return np.asarray(keep, dtype=np.int64)


def regress_by_extent(boxes: np.ndarray, regression: np.ndarray) -> np.ndarray:
    """P-Net's refinement: corners moved by the regression times the box's extent (x2 - x1, no +1)."""
    extent = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes + regression * extent


def regress_by_size(boxes: np.ndarray, regression: np.ndarray) -> np.ndarray:
    """R-/O-Net's refinement (``bbreg``): corners moved by the regression times the size (x2 - x1 + 1)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + _ONE, boxes[:, 3] - boxes[:, 1] + _ONE] * 2, axis=1)
    return boxes + regression * size


def square(boxes: np.ndarray) -> np.ndarray:
    """``rerec``: each box grown to a square of its longer side, about the same centre."""
    height = boxes[:, 3] - boxes[:, 1]
    width = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(width, height)
    x1 = boxes[:, 0] + width * _HALF - side * _HALF
    y1 = boxes[:, 1] + height * _HALF - side * _HALF
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def crop_spans(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``pad``: the pixel spans the nets crop, int (n, 4) first row, row end, first column, column end.

    Corners are truncated to integers and clipped to the image (no padding: a box over the edge
    gives the part inside, stretched). Returns the spans of the non-empty ones and their indices.
    """
    corners = np.trunc(boxes).astype(np.int32)
    x = np.maximum(corners[:, 0], 1) - 1
    y = np.maximum(corners[:, 1], 1) - 1
    x_end = np.minimum(corners[:, 2], width)
    y_end = np.minimum(corners[:, 3], height)
    valid = np.nonzero((y_end > y) & (x_end > x))[0]
    return np.stack([y, y_end, x, x_end], axis=1)[valid], valid
