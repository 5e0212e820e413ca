"""The MTCNN face detector's contract, torch-free: files, tensors, preprocessing, defaults, argument checks.

Three cascaded nets (P-, R-, O-Net) with the weights of facenet-pytorch's MTCNN. Every net takes
``image``: float32 NCHW RGB, rows top to bottom and columns left to right (the image's own
orientation), normalised as ``(pixel - 127.5) * 0.0078125``; pixels are resampled with area
averaging (PyTorch's ``interpolate(mode="area")``) before normalising. Outputs:

- P-Net, fully convolutional on one pyramid level [N, 3, H, W]: ``box_regression`` [N, 4, H', W']
  and ``face_probability`` [N, H', W'], H' = (ceil((H - 2) / 2) - 4), likewise W', one cell per
  12x12 window at stride 2.
- R-Net on 24x24 crops [N, 3, 24, 24]: ``box_regression`` [N, 4], ``face_probability`` [N].
- O-Net on 48x48 crops [N, 3, 48, 48]: those two and ``landmarks`` [N, 10], the five x then the five
  y, as fractions of the crop's box.

``box_regression`` holds (dx1, dy1, dx2, dy2), offsets of the box's corners in units of its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized
from numbers import Real
from pathlib import Path

DETECTOR_FORMAT = "pdsn-mtcnn-detector"
DETECTOR_FORMAT_VERSION = 1
DEFAULT_DETECTOR_DIR = "default_detector"
# The converted nets shipped with the package (``pdsn convert-mtcnn`` made them), beside this module.
SHIPPED_DETECTOR = Path(__file__).resolve().parent / DEFAULT_DETECTOR_DIR

PNET_FILE = "pnet.onnx"
RNET_FILE = "rnet.onnx"
ONET_FILE = "onet.onnx"
CONVERSION_REPORT = "conversion.json"

IMAGE_INPUT = "image"
BOX_OUTPUT = "box_regression"
PROBABILITY_OUTPUT = "face_probability"
LANDMARK_OUTPUT = "landmarks"

PNET_OUTPUTS = (BOX_OUTPUT, PROBABILITY_OUTPUT)
RNET_OUTPUTS = (BOX_OUTPUT, PROBABILITY_OUTPUT)
ONET_OUTPUTS = (BOX_OUTPUT, PROBABILITY_OUTPUT, LANDMARK_OUTPUT)

# By net: its outputs in order, and its square input side (None: any size, P-Net).
NET_OUTPUTS = {"pnet": PNET_OUTPUTS, "rnet": RNET_OUTPUTS, "onet": ONET_OUTPUTS}

PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125
INPUT_LAYOUT = "nchw-float32-rgb"

PNET_WINDOW = 12
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48
NUM_LANDMARKS = 5
NET_INPUT_SIZES = {"pnet": None, "rnet": RNET_SIZE, "onet": ONET_SIZE}

DEFAULT_MIN_FACE = 20.0
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_SCALE_FACTOR = 0.709
# NMS IoU limits, as facenet-pytorch applies them: within a pyramid level, across levels, after
# R-Net (all "union"), and after O-Net ("min": intersection over the smaller box).
NMS_WITHIN_SCALE = 0.5
NMS_ACROSS_SCALES = 0.7
NMS_AFTER_RNET = 0.7
NMS_AFTER_ONET = 0.7
# A pyramid whose smallest level would exceed this many levels is refused (min_face tiny against a big image).
MAX_PYRAMID_LEVELS = 64


def detector_contract() -> dict:
    """What the detector's files are, what they take and give, and how the cascade uses them (JSON-able)."""
    crop = {"dtype": "float32", "layout": "NCHW", "color": "RGB"}
    return {
        "format": DETECTOR_FORMAT,
        "format_version": DETECTOR_FORMAT_VERSION,
        "nets": {
            "pnet": {
                "file": PNET_FILE,
                "inputs": {IMAGE_INPUT: {**crop, "shape": ["N", 3, "H", "W"]}},
                "outputs": {
                    BOX_OUTPUT: {"dtype": "float32", "shape": ["N", 4, "H'", "W'"]},
                    PROBABILITY_OUTPUT: {"dtype": "float32", "shape": ["N", "H'", "W'"]},
                },
                "window": PNET_WINDOW,
                "stride": PNET_STRIDE,
            },
            "rnet": {
                "file": RNET_FILE,
                "inputs": {IMAGE_INPUT: {**crop, "shape": ["N", 3, RNET_SIZE, RNET_SIZE]}},
                "outputs": {
                    BOX_OUTPUT: {"dtype": "float32", "shape": ["N", 4]},
                    PROBABILITY_OUTPUT: {"dtype": "float32", "shape": ["N"]},
                },
            },
            "onet": {
                "file": ONET_FILE,
                "inputs": {IMAGE_INPUT: {**crop, "shape": ["N", 3, ONET_SIZE, ONET_SIZE]}},
                "outputs": {
                    BOX_OUTPUT: {"dtype": "float32", "shape": ["N", 4]},
                    PROBABILITY_OUTPUT: {"dtype": "float32", "shape": ["N"]},
                    LANDMARK_OUTPUT: {"dtype": "float32", "shape": ["N", 2 * NUM_LANDMARKS], "order": "x1..x5, y1..y5"},
                },
            },
        },
        "normalization": {"mean": PIXEL_MEAN, "scale": PIXEL_SCALE, "inside_graph": False, "layout": INPUT_LAYOUT},
        "resampling": "area (adaptive average pooling)",
        "landmarks": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
        "defaults": {
            "min_face": DEFAULT_MIN_FACE,
            "thresholds": list(DEFAULT_THRESHOLDS),
            "scale_factor": DEFAULT_SCALE_FACTOR,
        },
        "nms": {
            "within_scale": NMS_WITHIN_SCALE,
            "across_scales": NMS_ACROSS_SCALES,
            "after_rnet": NMS_AFTER_RNET,
            "after_onet": NMS_AFTER_ONET,
        },
    }


def check_detection_arguments(
    min_face: object, thresholds: object, scale_factor: object
) -> tuple[float, tuple[float, float, float], float]:
    """``min_face`` >= 12 px, three thresholds in [0, 1], ``scale_factor`` in (0, 1), as floats; else a named error."""
    min_face = _real(min_face, "min_face", "a face size in pixels, at least 12")
    if not min_face >= PNET_WINDOW:
        raise ValueError(
            f"min_face is {min_face!r}; it must be at least {PNET_WINDOW} (pixels, P-Net's window) and finite. "
            f"Pass the smallest face side to find, e.g. {DEFAULT_MIN_FACE:g}"
        )
    if (
        isinstance(thresholds, (str, bytes))
        or not isinstance(thresholds, Sized)
        or not isinstance(thresholds, Iterable)
        or len(thresholds) != 3
    ):
        raise TypeError(
            f"thresholds must be three probabilities (P-Net, R-Net, O-Net), got {thresholds!r}; "
            f"e.g. {DEFAULT_THRESHOLDS}"
        )
    checked = []
    for stage, value in zip(("P-Net", "R-Net", "O-Net"), thresholds, strict=True):
        value = _real(value, "thresholds", "three probabilities in [0, 1]")
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"thresholds: the {stage} threshold is {value!r}; each must lie in [0, 1], e.g. {DEFAULT_THRESHOLDS}"
            )
        checked.append(value)
    scale_factor = _real(scale_factor, "scale_factor", "the pyramid's scale step in (0, 1)")
    if not 0.0 < scale_factor < 1.0:
        raise ValueError(
            f"scale_factor is {scale_factor!r}; it must lie strictly between 0 and 1 (each pyramid level is "
            f"this fraction of the last), e.g. {DEFAULT_SCALE_FACTOR}"
        )
    return min_face, (checked[0], checked[1], checked[2]), scale_factor


def pyramid_scales(height: int, width: int, min_face: float, scale_factor: float) -> list[float]:
    """The pyramid's scales, computed as facenet-pytorch does (repeated products, so the floats agree)."""
    scale = PNET_WINDOW / min_face
    side = min(height, width) * scale
    scales: list[float] = []
    while side >= PNET_WINDOW:
        if len(scales) == MAX_PYRAMID_LEVELS:
            raise ValueError(
                f"min_face={min_face:g} and scale_factor={scale_factor:g} give more than {MAX_PYRAMID_LEVELS} "
                f"pyramid levels on a {width}x{height} image; raise min_face or lower scale_factor"
            )
        scales.append(scale)
        scale *= scale_factor
        side *= scale_factor
    return scales


def _real(value: object, argument: str, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return value
