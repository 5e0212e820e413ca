"""``FaceDetector``: MTCNN (P-, R-, O-Net cascade) on uint8 RGB photos, numpy + ONNX Runtime / OpenVINO.

The pipeline is facenet-pytorch's MTCNN, step for step and in float32, so it finds the same faces
with the same boxes, scores and landmarks: an image pyramid from ``min_face`` down by
``scale_factor``; P-Net on each level proposes windows (score >= thresholds[0]), NMS within each
level (IoU 0.5) and across levels (0.7), regressed and squared; R-Net on their 24x24 crops keeps
those above thresholds[1], NMS 0.7, regressed and squared; O-Net on 48x48 crops keeps those above
thresholds[2], gives the landmarks, regresses the box, and a last NMS by overlap over the smaller
box (0.7) removes boxes nested in others. One difference: a box whose crop would be empty (wholly
outside the image) is dropped here, where facenet-pytorch would misalign the boxes and crops after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.detector_contract import (
    DEFAULT_MIN_FACE,
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THRESHOLDS,
    NET_INPUT_SIZES,
    NET_OUTPUTS,
    NMS_ACROSS_SCALES,
    NMS_AFTER_ONET,
    NMS_AFTER_RNET,
    NMS_WITHIN_SCALE,
    NUM_LANDMARKS,
    ONET_FILE,
    ONET_SIZE,
    PNET_FILE,
    RNET_FILE,
    RNET_SIZE,
    SHIPPED_DETECTOR,
    check_detection_arguments,
    pyramid_scales,
)
from pdsn.runtime.detection.boxes import (
    crop_spans,
    nms_min,
    nms_union,
    pnet_candidates,
    regress_by_extent,
    regress_by_size,
    square,
)
from pdsn.runtime.detection.nets import open_nets
from pdsn.runtime.detection.resample import crops, integral_image, pyramid_level

_ONE = np.float32(1.0)


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a photo, in that photo's pixels.

    ``box``: x1, y1, x2, y2; ``score``: O-Net's face probability; ``landmarks``: float64 (5, 2) x, y of
    the left eye, right eye, nose, left and right mouth corners (the image's left first).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DetectedFace):
            return NotImplemented
        return self.box == other.box and self.score == other.score and np.array_equal(self.landmarks, other.landmarks)

    def __hash__(self) -> int:
        return hash((self.box, self.score))

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels."""
        return max(self.width, self.height)


def default_detector_files() -> tuple[Path, Path, Path]:
    """The P-, R- and O-Net files shipped with pdsn (``pdsn/model/default_detector``)."""
    return SHIPPED_DETECTOR / PNET_FILE, SHIPPED_DETECTOR / RNET_FILE, SHIPPED_DETECTOR / ONET_FILE


class FaceDetector:
    """MTCNN on ``backend`` ("onnxruntime" or "openvino") and ``device`` ("cpu", or "cuda" on ONNX Runtime).

    ``detect`` may be called from several threads at once.
    """

    def __init__(
        self,
        pnet: Path,
        rnet: Path,
        onet: Path,
        backend: str = "onnxruntime",
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        paths = {"pnet": Path(pnet), "rnet": Path(rnet), "onet": Path(onet)}
        nets, self._where = open_nets(paths, NET_OUTPUTS, NET_INPUT_SIZES, backend, device, threads)
        self._pnet, self._rnet, self._onet = nets["pnet"], nets["rnet"], nets["onet"]

    def describe(self) -> dict:
        """Where the detector runs: backend, device, providers, threads."""
        return dict(self._where)

    def detect(
        self,
        image: np.ndarray,
        min_face: float = DEFAULT_MIN_FACE,
        thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
    ) -> list[DetectedFace]:
        """The faces in ``image`` (uint8 RGB (H, W, 3)) with a side of about ``min_face`` px or more, highest score first."""
        _check_image(image)
        min_face, thresholds, scale_factor = check_detection_arguments(min_face, thresholds, scale_factor)
        height, width = image.shape[:2]
        scales = pyramid_scales(height, width, min_face, scale_factor)
        if not scales:
            return []
        total = integral_image(image)
        boxes, scores = self._proposals(total, height, width, scales, thresholds[0])
        boxes, scores = self._refined(total, boxes, height, width, thresholds[1])
        boxes, scores, landmarks = self._outputs(total, boxes, height, width, thresholds[2])
        return [
            DetectedFace(
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                score=float(score),
                landmarks=points.astype(np.float64),
            )
            for box, score, points in zip(boxes, scores, landmarks)
        ]

    def _proposals(self, total, height, width, scales, threshold):
        """Stage 1: P-Net windows over the pyramid, NMS per level and across, regressed, squared."""
        found = []
        for scale in scales:
            level = pyramid_level(total, int(height * scale + 1), int(width * scale + 1))
            regression, probability = self._pnet(level)
            boxes, scores, offsets = pnet_candidates(regression[0], probability[0], scale, threshold)
            keep = nms_union(boxes, scores, NMS_WITHIN_SCALE)
            found.append((boxes[keep], scores[keep], offsets[keep]))
        boxes, scores, offsets = (np.concatenate(parts) for parts in zip(*found))
        keep = nms_union(boxes, scores, NMS_ACROSS_SCALES)
        return square(regress_by_extent(boxes[keep], offsets[keep])), scores[keep]

    def _refined(self, total, boxes, height, width, threshold):
        """Stage 2: R-Net on 24x24 crops, score > threshold, NMS, regressed, squared."""
        spans, valid = crop_spans(boxes, width, height)
        if not len(valid):
            return boxes[:0], np.zeros(0, np.float32)
        regression, probability = self._rnet(crops(total, spans, RNET_SIZE))
        passed = np.nonzero(probability > np.float32(threshold))[0]
        boxes, scores, regression = boxes[valid][passed], probability[passed], regression[passed]
        keep = nms_union(boxes, scores, NMS_AFTER_RNET)
        return square(regress_by_size(boxes[keep], regression[keep])), scores[keep]

    def _outputs(self, total, boxes, height, width, threshold):
        """Stage 3: O-Net on 48x48 crops, score > threshold, landmarks, regressed, NMS by the smaller box."""
        spans, valid = crop_spans(boxes, width, height)
        if not len(valid):
            return boxes[:0], np.zeros(0, np.float32), np.zeros((0, NUM_LANDMARKS, 2), np.float32)
        regression, probability, marks = self._onet(crops(total, spans, ONET_SIZE))
        passed = np.nonzero(probability > np.float32(threshold))[0]
        boxes, scores = boxes[valid][passed], probability[passed]
        regression, marks = regression[passed], marks[passed]
        size_x = (boxes[:, 2] - boxes[:, 0] + _ONE)[:, None]
        size_y = (boxes[:, 3] - boxes[:, 1] + _ONE)[:, None]
        xs = size_x * marks[:, :NUM_LANDMARKS] + boxes[:, 0:1] - _ONE
        ys = size_y * marks[:, NUM_LANDMARKS:] + boxes[:, 1:2] - _ONE
        boxes = regress_by_size(boxes, regression)
        keep = nms_min(boxes, scores, NMS_AFTER_ONET)
        return boxes[keep], scores[keep], np.stack([xs, ys], axis=2)[keep]


def _check_image(image: object) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image: expected a uint8 RGB array (H, W, 3) as pdsn.runtime.preprocess.load_image gives, got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}; decode files with "
            f"load_image / decode_image, and convert other arrays to uint8 RGB first"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty image, got shape {image.shape}")
