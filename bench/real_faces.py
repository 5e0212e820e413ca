"""Real faces from the registry's photos, labelled by person and multiplied by augmentation.

The people: insightface's t1.jpg (six people, named by their place from left to right), Biden
(face_recognition's biden.jpg) and Obama (obama.jpg, obama2.jpg, obama3.jpg: three photos of one
person). 32bit.png is obama2.jpg again and is left out; the partial-face and masked photos are kept
for evaluating occlusion, never for learning. That is 8 people in 10 faces: every figure resting on
them says so.

Each face is found by the bundle's own detector, and augmented chips of it are cut from the photo
the way the runtime cuts them (``pdsn.runtime.preprocess.align_detected``), with the landmarks moved
as a detector's error and framing move them (rotation, scale, shift, per-point noise), the photo
mirrored half the time, and the chip's light, colour, sharpness, noise and JPEG quality varied. The
augmentation seed decides every draw, so a training set and an evaluation set from different seeds
share people but no chip.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.model.crop_alignment import CROP_ALIGNMENTS, DLIB_CHIP_150
from pdsn.runtime.detection import FaceDetector, default_detector_files
from pdsn.runtime.preprocess import align_detected, load_image

MIN_FACE = 40
GROUP_PEOPLE = 6
# Mirroring swaps the left and right landmarks: eyes (0, 1) and mouth corners (3, 4).
MIRRORED_ORDER = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class RealFace:
    """One face of one photo: who it is, the photo (uint8 RGB) and its five detected landmarks."""

    person: str
    photo: str
    image: np.ndarray
    landmarks: np.ndarray


def real_faces() -> list[RealFace]:
    """Every face of the labelled photos (10 faces of 8 people), found by the shipped detector."""
    detector = FaceDetector(*default_detector_files())
    faces = []
    group = load_image(group_photo())
    found = sorted(detector.detect(group, min_face=MIN_FACE), key=lambda face: face.box[0])
    if len(found) != GROUP_PEOPLE:
        raise RuntimeError(f"t1.jpg: {len(found)} faces found, expected its {GROUP_PEOPLE} people")
    for place, face in enumerate(found, start=1):
        faces.append(RealFace(f"t1-person-{place}", "t1.jpg", group, face.landmarks))
    for path in portrait_photos():
        image = load_image(path)
        found = detector.detect(image, min_face=MIN_FACE)
        if len(found) != 1:
            raise RuntimeError(f"{path.name}: {len(found)} faces found, expected one person")
        person = "biden" if path.name.startswith("biden") else "obama"
        faces.append(RealFace(person, path.name, image, found[0].landmarks))
    return faces


def augmented_chips(face: RealFace, count: int, rng: np.random.Generator, alignment: str = DLIB_CHIP_150) -> np.ndarray:
    """``count`` augmented crops of ``face`` for ``alignment``, uint8 (count, H, W, 3)."""
    crop = CROP_ALIGNMENTS[alignment]
    mirrored = np.ascontiguousarray(face.image[:, ::-1])
    width = face.image.shape[1]
    chips = np.empty((count, crop.height, crop.width, 3), dtype=np.uint8)
    for index in range(count):
        landmarks, image = face.landmarks, face.image
        if rng.uniform() < 0.5:
            landmarks = np.column_stack([width - 1 - landmarks[:, 0], landmarks[:, 1]])[MIRRORED_ORDER]
            image = mirrored
        chips[index] = _photometric(align_detected(image, _moved(landmarks, rng), alignment), rng)
    return chips


def write_identity_folders(out: Path, per_face: int, seed: int, alignment: str = DLIB_CHIP_150) -> dict[str, int]:
    """``out/<person>/<photo>-NNN.png`` chips, ``per_face`` of each face; returns chips per person."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for face in real_faces():
        folder = out / face.person
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(face.photo).stem
        for number, chip in enumerate(augmented_chips(face, per_face, rng, alignment)):
            Image.fromarray(chip).save(folder / f"{stem}-{number:03d}.png")
        counts[face.person] = counts.get(face.person, 0) + per_face
    return counts


def _moved(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The landmarks rotated (up to 10 degrees), scaled (8%) and shifted about their centre, each point
    jittered: a detector's error and another framing of the same face."""
    eyes = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    centre = landmarks.mean(axis=0)
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.92, 1.08)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shift = rng.normal(0, 0.04 * eyes, 2)
    return (landmarks - centre) @ rotation.T + centre + shift + rng.normal(0, 0.02 * eyes, landmarks.shape)


def _photometric(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light (gain, contrast, gamma), colour balance, blur, noise and JPEG re-encoding, each drawn."""
    pixels = chip.astype(np.float64) / 255.0
    pixels = pixels ** rng.uniform(0.8, 1.25)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.25)
    pixels = pixels * rng.uniform(0.9, 1.1, 3)
    pixels = pixels + rng.normal(0, rng.uniform(0, 0.025), pixels.shape)
    image = Image.fromarray(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.uniform() < 0.4:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image, dtype=np.uint8)
