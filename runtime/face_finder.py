"""Images in, aligned crops out: crops pass as they are, photos go through the bundle's face detector.

``FaceFinder.locate`` is what every entry point that takes images (``Recognizer.embed``, ``features``,
``verify``, the gallery's ``enroll`` and ``identify``) calls first. It decodes files, bytes and PIL
images, keeps aligned crops, aligns photos by landmarks the caller gives, and otherwise finds the
faces itself: every face of a photo, or one (the only one, the largest, or one by index) where
the caller needs one. A photo in which no face is found is an error, never an empty answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from pdsn.errors import InputError
from pdsn.model.bundle_format import DETECTOR_NETS, ModelContract
from pdsn.runtime.bundle import Bundle
from pdsn.runtime.detection import DetectedFace, FaceDetector
from pdsn.runtime.inputs import prepare_images, to_model_layout, uint8_contract
from pdsn.runtime.photos import (
    DetectionSettings,
    FaceSource,
    aligned_crop,
    chosen_face_index,
    decoded,
    image_items,
    is_photo,
    no_face_error,
)
from pdsn.runtime.preprocess import DEFAULT_MAX_PIXELS, align_detected, align_face

ALL_FACES = "all"
T = TypeVar("T")


@dataclass(frozen=True)
class Located:
    """The aligned faces of a call's images, in the model's input layout.

    ``sources``: where each face came from, or None when every image was an aligned crop (or a photo
    aligned by the caller's landmarks), one face each, as before photos were accepted.
    """

    batch: np.ndarray
    sources: list[FaceSource] | None
    images: int

    def per_face(self, per_image: Sequence[T]) -> tuple[T, ...]:
        """Per-image items repeated for each face found in that image."""
        if self.sources is None:
            return tuple(per_image)
        return tuple(per_image[source.image] for source in self.sources)

    def __len__(self) -> int:
        return len(self.batch)

    def part(self, rows: slice) -> Located:
        """The faces in ``rows`` (``images``: how many images they came from)."""
        sources = None if self.sources is None else self.sources[rows]
        images = len(self.batch[rows]) if sources is None else len({source.image for source in sources})
        return Located(self.batch[rows], sources, images)


class FaceFinder:
    """The bundle's face detector (opened on first use) and the alignment of what it finds."""

    def __init__(self, bundle: Bundle, backend: str, device: str, threads: int | None) -> None:
        self._bundle = bundle
        self._spec = (backend, device, threads)
        self._detector: FaceDetector | None = None
        self._lock = threading.Lock()
        self.contract: ModelContract = bundle.contract

    @property
    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                self._detector = _open_detector(self._bundle, *self._spec)
            return self._detector

    def detect(
        self, photo: object, settings: DetectionSettings, argument: str = "photo", max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> list[DetectedFace]:
        """The faces in one photo, highest score first."""
        image = decoded(photo, argument, max_pixels)
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(
                f"{argument}: expected a photo as uint8 RGB (H, W, 3), a file path, image bytes or a PIL image, got "
                f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            )
        return self.detector.detect(image, settings.min_face, settings.thresholds, settings.scale_factor)

    def locate(
        self,
        images: object,
        landmarks: object = None,
        settings: DetectionSettings | None = None,
        face: int | str | None = ALL_FACES,
        argument: str = "images",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        landmarks_argument: str = "landmarks",
    ) -> Located:
        """Aligned faces of ``images`` (see the module docstring); ``face``: ``"all"`` faces of each photo,
        or one per photo (None: the only one; ``"largest"``; an index). Errors name ``argument`` and
        ``landmarks_argument`` (``images[1]``, ``landmarks[1]``)."""
        if isinstance(images, np.ndarray) and landmarks is None and not _holds_photos(images, self.contract):
            return Located(
                prepare_images(aligned_crop(images, self.contract), self.contract, argument), None, _count(images)
            )
        items = image_items(images, argument)
        single = len(items) == 1 and not isinstance(images, (list, tuple)) and not _is_batch_array(images)
        names = [argument if single else f"{argument}[{i}]" for i in range(len(items))]
        if landmarks is not None:
            return self._aligned_by(items, landmarks, names, (argument, landmarks_argument), max_pixels, single)
        arrays = [decoded(item, name, max_pixels) for item, name in zip(items, names)]
        if not any(is_photo(array, self.contract) for array in arrays):
            crops = [aligned_crop(array, self.contract) for array in arrays]
            return Located(self._batch(crops, argument, single), None, len(items))
        settings = settings or DetectionSettings()
        crops, sources = [], []
        for index, (array, name) in enumerate(zip(arrays, names)):
            if is_photo(array, self.contract):
                found = self.detector.detect(array, settings.min_face, settings.thresholds, settings.scale_factor)
                if not found:
                    raise no_face_error(name)
                for number in range(len(found)) if face == ALL_FACES else [chosen_face_index(found, face, name)]:
                    crops.append(align_detected(array, found[number].landmarks, self.contract.alignment))
                    sources.append(FaceSource(index, found[number]))
            else:
                crops.append(aligned_crop(array, self.contract))
                sources.append(FaceSource(index, None))
        return Located(self._batch(crops, argument, False), sources, len(items))

    def _aligned_by(
        self,
        items: list,
        landmarks: object,
        names: list[str],
        arguments: tuple[str, str],
        max_pixels: int,
        single: bool,
    ) -> Located:
        """``items`` aligned by the caller's ``landmarks``; ``arguments``: the images' and the landmarks' names."""
        images_argument, argument = arguments
        sets = [landmarks] if single else list(landmarks)  # type: ignore[call-overload]
        if len(sets) != len(items):
            raise InputError(
                argument,
                f"{argument}: {len(sets)} landmark sets for {len(items)} images; pass one set of 5 (x, y) points "
                "per image, or none to have the faces found",
            )
        crops = []
        for index, (item, points, name) in enumerate(zip(items, sets, names)):
            image = decoded(item, name, max_pixels)
            points_name = argument if single else f"{argument}[{index}]"
            crops.append(align_face(image, points, self.contract.alignment, argument=points_name))
        return Located(self._batch(crops, images_argument, single), None, len(items))

    def _batch(self, crops: list, argument: str, single: bool) -> np.ndarray:
        if all(isinstance(c, np.ndarray) and c.dtype == np.uint8 and c.ndim == 3 for c in crops):
            uint8 = prepare_images(crops[0] if single else crops, uint8_contract(self.contract), argument)
            return to_model_layout(uint8, self.contract)
        return prepare_images(crops[0] if single else crops, self.contract, argument)


def _holds_photos(images: np.ndarray, contract: ModelContract) -> bool:
    return is_photo(images[0] if images.ndim == 4 and len(images) else images, contract)


def _count(images: np.ndarray) -> int:
    return len(images) if images.ndim == 4 else 1


def _is_batch_array(images: object) -> bool:
    return isinstance(images, np.ndarray) and images.ndim == 4


def _open_detector(bundle: Bundle, backend: str, device: str, threads: int | None) -> FaceDetector:
    entry = bundle.manifest.detector
    if entry is None:
        raise ValueError(
            f"bundle {bundle.path} has no face detector (exported by an older pdsn-deploy), so it takes only aligned "
            f"crops or photos with landmarks; add one with `pdsn add-detector --bundle {bundle.path}`"
        )
    pnet, rnet, onet = (bundle.file(entry.files[net], f"detector.files.{net}") for net in DETECTOR_NETS)
    return FaceDetector(pnet, rnet, onet, backend=backend, device=device, threads=threads)
