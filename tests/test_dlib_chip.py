"""dlib-compatible chips from our detector's landmarks (``pdsn.model.dlib_chip``), against dlib's own.

On the real photos (``pdsn.bench.real_photos``: t1.jpg with six people, four portraits of Biden and
Obama), every face that both dlib's HOG detector and our MTCNN find is cut twice: by dlib (5-point
shape predictor, ``get_face_chip`` 150x150, padding 0.25) and by ``dlib_chip`` from MTCNN's five
landmarks. The two chips are compared as pixels, as landmark positions, and through dlib's ResNet
(``DlibResNet`` on ours, dlib's own descriptor of dlib's chip). The template was derived on these same
faces (leave-one-out figures in ``pdsn.model.dlib_chip``), so the bounds hold with margin over both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from pdsn.bench.dlib_peer import CHIP_PADDING, CHIP_SIZE, dlib_descriptors, dlib_model_files
from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.model.dlib_chip import (
    ANALYTIC_TEMPLATE_DLIB_150,
    DLIB_CHIP_SIZE,
    TEMPLATE_DLIB_150,
    chip_details,
    dlib_chip,
    extract_chip,
    image_to_chip,
)
from pdsn.model.dlib_resnet import DlibResNet
from pdsn.runtime.detection import FaceDetector, default_detector_files

DLIB_SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance
MIN_FACE = 40
PEOPLE = {"biden.jpg": "Biden", "obama.jpg": "Obama", "obama2.jpg": "Obama", "obama3.jpg": "Obama"}

# Measured (dlib-bin 20.0.1, 10 faces of 8 people): chip mean |difference| 17.7 mean / 27.9 max
# (0..255); our landmarks 4.6 mean / 14.9 max chip px apart between our chip and dlib's (mean of the
# five per face); descriptor distance 0.188 mean / 0.405 max (leave-one-out templates: 0.198 / 0.430);
# t1's closest different-person pair 0.609 (dlib's own pipeline: 0.628, the same pair).
MAX_CHIP_DIFFERENCE = 40.0
MEAN_CHIP_DIFFERENCE = 25.0
MAX_LANDMARK_DISTANCE = 20.0
MEAN_LANDMARK_DISTANCE = 7.0
MAX_DESCRIPTOR_DISTANCE = 0.5
MEAN_DESCRIPTOR_DISTANCE = 0.26


@dataclass
class Face:
    photo: str
    person: str
    image: np.ndarray
    landmarks: np.ndarray  # ours (MTCNN), image pixels
    dlib_rect: tuple[float, float, float, float]
    dlib_angle: float
    dlib_chip: np.ndarray


@pytest.fixture(scope="module")
def faces() -> list[Face]:
    """Every face found by both dlib (HOG, upsampled once) and our detector, matched by centre."""
    import dlib

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_files()["shape_predictor_5"]))
    ours = FaceDetector(*default_detector_files())
    found = []
    for photo in [group_photo(), *portrait_photos()]:
        image = np.ascontiguousarray(np.asarray(Image.open(photo).convert("RGB")))
        detected = ours.detect(image, min_face=MIN_FACE)
        boxes = list(hog(image, 1))
        assert len(boxes) == len(detected) == (6 if photo.name == "t1.jpg" else 1), photo.name
        for number, box in enumerate(boxes):
            centre = np.array([(box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2])
            gaps = [np.linalg.norm(face.landmarks.mean(axis=0) - centre) for face in detected]
            assert min(gaps) < box.width() / 4, f"{photo.name}: dlib's face {box} has no match"
            shape = predictor(image, box)
            details = dlib.get_face_chip_details(shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            rect = (details.rect.left(), details.rect.top(), details.rect.right(), details.rect.bottom())
            found.append(
                Face(
                    photo=photo.name,
                    person=PEOPLE.get(photo.name, f"t1 person {number}"),
                    image=image,
                    landmarks=detected[int(np.argmin(gaps))].landmarks,
                    dlib_rect=rect,
                    dlib_angle=details.angle,
                    dlib_chip=dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING),
                )
            )
    return found


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return DlibResNet.from_file(dlib_model_files()["face_recognition"]).eval()


def _descriptors(model: DlibResNet, chips: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(model.normalise(np.stack(chips))).numpy()


def _basis(faces: list[Face]) -> str:
    return f"{len(faces)} faces of {len({face.person for face in faces})} people"


def test_template_constant():
    assert DLIB_CHIP_SIZE == CHIP_SIZE == 150
    for template in (TEMPLATE_DLIB_150, ANALYTIC_TEMPLATE_DLIB_150):
        assert template.shape == (5, 2) and template.dtype == np.float64
        assert not template.flags.writeable
        assert ((template > 0) & (template < DLIB_CHIP_SIZE - 1)).all()
    left_eye, right_eye, nose, left_mouth, right_mouth = TEMPLATE_DLIB_150
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_landmarks_on_the_template_give_the_image_back():
    """Landmarks already at the template: the chip is the image (dlib's bilinear needs a right and a
    lower neighbour, so the last row and column are black, as in dlib)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE, 3), dtype=np.uint8)
    chip = dlib_chip(image, np.array(TEMPLATE_DLIB_150))
    np.testing.assert_array_equal(chip[:-1, :-1], image[:-1, :-1])
    assert not chip[-1].any() and not chip[:, -1].any()


def test_chip_details_put_the_landmarks_on_the_template():
    landmarks = np.array([[400.0, 300.0], [470.0, 310.0], [430.0, 350.0], [405.0, 385.0], [462.0, 392.0]])
    rect, angle = chip_details(landmarks)
    mapping = image_to_chip(rect, angle)
    in_chip = landmarks @ mapping[:, :2].T + mapping[:, 2]
    assert np.abs(in_chip - TEMPLATE_DLIB_150).max() < 4.0  # the least-squares fit's residual


def test_refuses_a_non_rgb_image():
    with pytest.raises(ValueError, match="uint8 RGB"):
        dlib_chip(np.zeros((100, 100), dtype=np.uint8), np.array(TEMPLATE_DLIB_150))


def test_extraction_is_dlibs(faces):
    """Given dlib's own chip transform, the resampling (pyramid levels included) is dlib's."""
    for face in faces:
        chip = extract_chip(face.image, face.dlib_rect, face.dlib_angle)
        difference = np.abs(chip.astype(int) - face.dlib_chip.astype(int))
        assert difference.max() <= 1, f"{face.photo}: {difference.max()} grey levels from dlib's chip"
        assert (difference > 0).mean() < 0.01


def test_chips_match_dlibs(faces):
    """Our chip of each face against dlib's: pixels, and where our five landmarks land in each."""
    pixel_differences, landmark_distances = [], []
    for face in faces:
        chip = dlib_chip(face.image, face.landmarks)
        pixel_differences.append(np.abs(chip.astype(float) - face.dlib_chip.astype(float)).mean())
        ours = image_to_chip(*chip_details(face.landmarks))
        dlibs = image_to_chip(face.dlib_rect, face.dlib_angle)
        in_ours = face.landmarks @ ours[:, :2].T + ours[:, 2]
        in_dlibs = face.landmarks @ dlibs[:, :2].T + dlibs[:, 2]
        landmark_distances.append(np.linalg.norm(in_ours - in_dlibs, axis=1).mean())
    pixel_differences, landmark_distances = np.array(pixel_differences), np.array(landmark_distances)
    print(
        f"\n{_basis(faces)}: chip mean |difference| {pixel_differences.mean():.1f} mean, "
        f"{pixel_differences.max():.1f} max (0..255); landmarks {landmark_distances.mean():.1f} mean, "
        f"{landmark_distances.max():.1f} max chip px apart"
    )
    assert len(faces) == 10
    assert pixel_differences.max() < MAX_CHIP_DIFFERENCE
    assert pixel_differences.mean() < MEAN_CHIP_DIFFERENCE
    assert landmark_distances.max() < MAX_LANDMARK_DISTANCE
    assert landmark_distances.mean() < MEAN_LANDMARK_DISTANCE


def test_descriptors_match_dlibs(faces, model):
    """dlib's ResNet on our chip stays well within dlib's same-person threshold of dlib's own pipeline."""
    ours = _descriptors(model, [dlib_chip(face.image, face.landmarks) for face in faces])
    theirs = dlib_descriptors([face.dlib_chip for face in faces])
    distances = np.linalg.norm(ours - theirs, axis=1)
    print(f"\n{_basis(faces)}: descriptor distance to dlib's {distances.mean():.3f} mean, {distances.max():.3f} max")
    assert distances.max() < MAX_DESCRIPTOR_DISTANCE < DLIB_SAME_PERSON
    assert distances.mean() < MEAN_DESCRIPTOR_DISTANCE


def test_different_people_stay_apart(faces, model):
    """t1.jpg's six people, from our chips: every pair is farther apart than dlib's threshold. The
    closest pair is close in dlib's own pipeline too (0.628), so the margin is thin but not ours."""
    group = [face for face in faces if face.photo == "t1.jpg"]
    ours = _closest_pair(group, _descriptors(model, [dlib_chip(face.image, face.landmarks) for face in group]))
    dlibs = _closest_pair(group, dlib_descriptors([face.dlib_chip for face in group]))
    print(
        f"\n{len(group)} people, 15 pairs: closest {ours[0]} at {ours[1]:.3f} from our chips; "
        f"{dlibs[0]} at {dlibs[1]:.3f} in dlib's own pipeline"
    )
    assert len(group) == 6
    assert ours[1] > DLIB_SAME_PERSON
    assert ours[1] > dlibs[1] - 0.05


def _closest_pair(group: list[Face], descriptors: np.ndarray) -> tuple[tuple[str, str], float]:
    distances = {
        (a.person, b.person): float(np.linalg.norm(descriptors[i] - descriptors[j]))
        for (i, a), (j, b) in itertools.combinations(enumerate(group), 2)
    }
    closest = min(distances, key=distances.get)
    return closest, distances[closest]
