"""Photos in, through the runtime: every entry point takes a photo (array, path, bytes, PIL image) and finds its faces.

The photos are real ones from registry packages (``pdsn.bench.real_photos``): the group photo has six people
(and, at the detector's default thresholds, two more low-scoring detections); the test asks for
``MIN_FACE`` px faces, at which exactly the six are found.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pdsn.bench.real_photos import aligned_crop_112, group_photo, portrait_photos
from pdsn.runtime import ImageTooLargeError, Recognizer, load_image
from pdsn.runtime.gallery import Gallery
from pdsn.runtime.photos import DetectionSettings, FaceCountError
from pdsn.runtime.recognizer import FaceEmbedding

MIN_FACE = 60
PEOPLE = 6
SETTINGS = DetectionSettings(min_face=MIN_FACE)


@pytest.fixture(scope="module")
def recognizer(tiny_bundle):
    with Recognizer.open(tiny_bundle, backend="onnxruntime") as opened:
        yield opened


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    return load_image(group_photo())


def _boxes(faces) -> np.ndarray:
    return np.array(sorted(tuple(f.box) for f in faces))


def test_detect_takes_every_kind_of_photo(recognizer, group):
    path = group_photo()
    found = recognizer.detect(path, min_face=MIN_FACE)
    assert len(found) == PEOPLE
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    for photo in (str(path), path.read_bytes(), Image.open(path), group):
        assert np.allclose(_boxes(recognizer.detect(photo, min_face=MIN_FACE)), _boxes(found))
    assert len(recognizer.detect(path)) >= PEOPLE  # default min_face 20 px finds at least the six


def test_embed_of_a_photo_gives_one_result_per_face(recognizer, group):
    faces = recognizer.embed(group_photo(), detection=SETTINGS)
    assert len(faces) == PEOPLE and all(isinstance(f, FaceEmbedding) for f in faces)
    assert {f.image for f in faces} == {0}
    assert all(f.face is not None and f.embedding.shape == (512,) and f.occluded_cells == [] for f in faces)
    # each face's embedding is that of its own aligned crop
    crops = recognizer.locate(group, detection=SETTINGS).batch
    assert np.allclose(np.stack([f.embedding for f in faces]), recognizer.embed(crops), atol=1e-5)


def test_a_path_is_one_image_and_a_list_mixes_photos_and_crops(recognizer, group):
    crop = recognizer.locate(group, detection=SETTINGS).batch[0]
    faces = recognizer.embed([str(group_photo()), crop], detection=SETTINGS)
    assert [f.image for f in faces] == [0] * PEOPLE + [1]
    assert faces[-1].face is None
    assert np.allclose(faces[-1].embedding, recognizer.embed(crop), atol=1e-5)


def test_per_image_occlusion_reaches_every_face_of_that_image(recognizer):
    photos = [str(group_photo()), str(portrait_photos()[0])]
    faces = recognizer.embed(photos, occlusion=[[10, 11], [20]], detection=SETTINGS)
    assert [f.occluded_cells for f in faces] == [[10, 11]] * PEOPLE + [[20]] * (len(faces) - PEOPLE)


def test_a_112x112_crop_is_cut_to_the_112x96_template(recognizer):
    crop = load_image(aligned_crop_112())
    assert crop.shape == (112, 112, 3)
    assert np.allclose(recognizer.embed(crop), recognizer.embed(crop[:, 8:104]), atol=1e-6)
    assert np.allclose(recognizer.embed(str(aligned_crop_112())), recognizer.embed(crop[:, 8:104]), atol=1e-6)


def test_a_photo_without_a_face_is_an_error_not_an_empty_answer(recognizer):
    blank = np.full((240, 320, 3), 128, np.uint8)
    with pytest.raises(FaceCountError, match="images: no face found") as raised:
        recognizer.embed(blank)
    assert raised.value.found == 0
    assert recognizer.detect(blank) == []
    with pytest.raises(FaceCountError, match=r"images\[1\]: no face found"):
        recognizer.embed([str(group_photo()), blank])


def test_verify_compares_the_largest_faces_unless_told(recognizer, group):
    faces = recognizer.detect(group, min_face=MIN_FACE)
    largest = max(faces, key=lambda f: f.width * f.height)
    result = recognizer.verify(group, group, detection=SETTINGS)
    assert result.face_a.box == largest.box and result.face_b.box == largest.box
    assert result.score == pytest.approx(1.0, abs=1e-5)
    other = recognizer.verify(group, group, face_b=1, detection=SETTINGS)
    assert other.face_b.box == faces[1].box and other.score < 0.999
    with pytest.raises(FaceCountError, match=f"image_a: {PEOPLE} faces found, exactly one expected"):
        recognizer.verify(group, group, face_a=None, detection=SETTINGS)
    with pytest.raises(FaceCountError, match=rf"image_b: face=9, but the photo has {PEOPLE} face\(s\)"):
        recognizer.verify(group, group, face_b=9, detection=SETTINGS)
    with pytest.raises(TypeError, match="face: expected None, 'largest' or a face index"):
        recognizer.verify(group, group, face_b="smallest", detection=SETTINGS)


def test_gallery_enrolls_one_face_per_photo_and_identifies_every_face(recognizer, group, tmp_path):
    faces = recognizer.detect(group, min_face=MIN_FACE)
    with Gallery.open(tmp_path / "gallery.db", recognizer, create=True) as gallery:
        with pytest.raises(FaceCountError, match=f"{PEOPLE} faces found, exactly one expected") as raised:
            gallery.enroll("everyone", group_photo(), detection=SETTINGS)
        assert raised.value.found == PEOPLE and "everyone" not in gallery
        for index in range(PEOPLE):
            gallery.enroll(f"person-{index}", group_photo(), face=index, detection=SETTINGS)
        gallery.enroll("largest", group, face="largest", detection=SETTINGS)
        results = gallery.identify(group_photo(), k=1, detection=SETTINGS)
        assert len(results) == PEOPLE
        for index, result in enumerate(results):
            assert result.face.box == faces[index].box and result.image == 0
            assert result.matches[0].score == pytest.approx(1.0, abs=1e-4)
            assert result.matches[0].identity in (f"person-{index}", "largest")
        many = gallery.identify_many([group, portrait_photos()[0]], k=1, detection=SETTINGS)
        assert [r.image for r in many][:PEOPLE] == [0] * PEOPLE and many[-1].image == 1


@pytest.mark.parametrize("kind", ["grey", "cmyk", "16-bit", "exif-rotated"])
def test_grey_cmyk_16_bit_and_rotated_photos_find_the_same_faces(recognizer, group, kind):
    image = Image.fromarray(group)
    buffer = io.BytesIO()
    if kind == "grey":
        image.convert("L").save(buffer, "PNG")
    elif kind == "cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "16-bit":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(buffer, "PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display: the pixels are stored turned left
        image.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    found = recognizer.detect(buffer.getvalue(), min_face=MIN_FACE)
    reference = recognizer.detect(group, min_face=MIN_FACE)
    assert len(found) == PEOPLE
    assert np.abs(_boxes(found) - _boxes(reference)).max() < 12


def test_a_huge_photo_is_refused_before_any_pyramid(recognizer):
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    with pytest.raises(ImageTooLargeError, match="refused before decoding"):
        recognizer.detect(buffer.getvalue())
    with pytest.raises(ImageTooLargeError):
        recognizer.embed(buffer.getvalue())


def test_a_hundred_faces_and_a_face_cut_by_the_border(recognizer, group):
    face = recognizer.detect(group, min_face=MIN_FACE)[0]
    x1, y1, x2, y2 = (round(v) for v in face.box)
    margin = (x2 - x1) // 3
    tile = group[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin]
    tile = np.asarray(Image.fromarray(tile).resize((64, 80)))
    sheet = np.tile(tile, (10, 10, 1))
    found = recognizer.embed(sheet, detection=DetectionSettings(min_face=30))
    assert len(found) == 100
    left = min(recognizer.detect(group, min_face=MIN_FACE), key=lambda f: f.box[0])
    cut = group[:, int(left.box[0] + left.width * 0.2) :]  # the leftmost face loses a fifth to the border
    faces = recognizer.embed(cut, detection=SETTINGS)
    at_border = [index for index, f in enumerate(faces) if f.face.box[0] < 0]
    assert len(at_border) == 1  # found, and aligned: its crop is black where the photo ends
    crop = recognizer.locate(cut, detection=SETTINGS).batch[at_border[0]]
    assert (crop[:, :3] == 0).all() and crop[:, 48:].std() > 10


def test_detection_memory_stays_within_what_the_docs_say(recognizer, group):
    """docs/photos.md: detection takes about 22-25 bytes a pixel at its peak; hold it under 30."""
    import tracemalloc

    photo = np.asarray(Image.fromarray(group).resize((2400, 1800)))  # 4.3 MP
    recognizer.detect(photo, min_face=MIN_FACE)  # sessions and first-call buffers out of the way
    tracemalloc.start()
    try:
        recognizer.detect(photo)  # the default min_face: the deepest pyramid
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / (photo.shape[0] * photo.shape[1]) < 30
