"""`pdsn serve` on photos: /v1/detect, and embed, verify, identify and enroll finding the faces themselves.

Answers are checked against the in-process ``Recognizer`` on the same photo; the photos are real ones
from registry packages (``pdsn.bench.real_photos``).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serve_harness import gallery_service, png

from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import load_image

OPTIONS = ("--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "8", "--max-delay-ms", "2")
MIN_FACE = 60
PEOPLE = 6


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-photos")
    with gallery_service(tiny_bundle, folder, *OPTIONS) as (_, http):
        yield http


@pytest.fixture(scope="module")
def group() -> bytes:
    return group_photo().read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_detect_answers_what_the_runtime_finds(client, tiny_recognizer, group):
    answer = client.post("/v1/detect", files={"image": ("t1.jpg", group)}, data={"min_face": str(MIN_FACE)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = tiny_recognizer.detect(group, min_face=MIN_FACE)
    assert len(body["faces"]) == PEOPLE and (body["width"], body["height"]) == load_image(group_photo()).shape[1::-1]
    for face, found in zip(body["faces"], expected):
        assert np.allclose(face["box"], found.box, atol=1e-3)
        assert np.allclose(face["landmarks"], found.landmarks, atol=1e-3)
        assert face["score"] == pytest.approx(found.score, abs=1e-6)


def test_embed_answers_each_face_with_where_it_was(client, tiny_recognizer, group):
    answer = client.post("/v1/embed", json={"images": [_b64(group)], "min_face": MIN_FACE})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = tiny_recognizer.embed(group, detection=_settings())
    assert len(body["embeddings"]) == len(body["faces"]) == PEOPLE
    assert np.allclose(body["embeddings"], [f.embedding for f in expected], atol=1e-4)
    assert np.allclose([f["box"] for f in body["faces"]], [f.face.box for f in expected], atol=1e-3)


def test_a_crop_beside_a_photo_answers_null_for_its_face(client, tiny_recognizer, group):
    crop = seeded_faces(1, seed=77)[0]
    answer = client.post("/v1/embed", json={"images": [_b64(png(crop)), _b64(group)], "min_face": MIN_FACE})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["embeddings"]) == len(body["faces"]) == PEOPLE + 1
    assert body["faces"][0] is None and all(face["image"] == 1 for face in body["faces"][1:])
    assert np.allclose(body["embeddings"][0], tiny_recognizer.embed(crop[None])[0], atol=1e-4)


def test_identify_a_photo_answers_per_face_and_enroll_needs_one_face(client, group):
    answer = client.post(
        "/v1/identities", files={"images": ("t1.jpg", group)}, data={"identity": "crowd", "min_face": str(MIN_FACE)}
    )
    assert answer.status_code == 422 and answer.json()["field"] == "images[0]"
    assert f"{PEOPLE} faces found, exactly one expected" in answer.json()["error"]
    for index in range(PEOPLE):
        answer = client.post(
            "/v1/identities",
            files={"images": ("t1.jpg", group)},
            data={"identity": f"person-{index}", "face": str(index), "min_face": str(MIN_FACE)},
        )
        assert answer.status_code == 201, answer.text
        assert len(answer.json()["faces"]) == 1
    answer = client.post(
        "/v1/identities",
        files={"images": ("t1.jpg", group)},
        data={"identity": "the-largest", "face": "largest", "occlusion": "[]", "min_face": str(MIN_FACE)},
    )
    assert answer.status_code == 201, answer.text
    answer = client.post("/v1/identify", files={"image": ("t1.jpg", group)}, data={"k": "1", "min_face": str(MIN_FACE)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["matches"] is None and len(body["faces"]) == PEOPLE
    for index, face in enumerate(body["faces"]):
        assert face["matches"][0]["identity"] in (f"person-{index}", "the-largest")
        assert face["matches"][0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5


def test_verify_two_photos_compares_their_largest_faces(client, tiny_recognizer, group):
    other = portrait_photos()[0].read_bytes()
    answer = client.post("/v1/verify", json={"image_a": _b64(group), "image_b": _b64(other), "threshold": 0.5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = tiny_recognizer.verify(group, other, threshold=0.5)
    assert body["score"] == pytest.approx(expected.score, abs=1e-4)
    assert body["face_a"]["box"] == pytest.approx(list(expected.face_a.box), abs=1e-3)
    assert body["face_b"]["box"] == pytest.approx(list(expected.face_b.box), abs=1e-3)


@pytest.mark.parametrize(
    ("route", "files", "data", "field", "message"),
    [
        ("/v1/embed", {"images": ("blank.png", "BLANK")}, {}, "images[0]", "no face found"),
        ("/v1/identify", {"image": ("blank.png", "BLANK")}, {}, "image", "no face found"),
        ("/v1/detect", {"image": ("t1.jpg", "GROUP")}, {"min_face": "5"}, "min_face", "greater than or equal to 12"),
        (
            "/v1/verify",
            {"image_a": ("t1.jpg", "GROUP"), "image_b": ("t1.jpg", "GROUP")},
            {"face_b": "40"},
            "image_b",
            "face=40, but",
        ),
        (
            "/v1/identities",
            {"images": ("t1.jpg", "GROUP")},
            {"identity": "x", "face": "biggest"},
            "face",
            "'largest', a face index",
        ),
    ],
)
def test_photo_errors_are_422_naming_the_field(client, group, route, files, data, field, message):
    blank = png(np.full((200, 300, 3), 128, np.uint8))
    sent = {name: (file, {"BLANK": blank, "GROUP": group}[content]) for name, (file, content) in files.items()}
    answer = client.post(route, files=sent, data={"min_face": str(MIN_FACE), **data})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and message in answer.json()["error"]


def test_occlusion_auto_is_a_plain_multipart_field(client, tiny_recognizer):
    """Read as "auto" (not refused as JSON); this bundle has no estimator, which the answer then names."""
    crop = tiny_recognizer.locate(group_photo(), detection=_settings()).batch[0]
    answer = client.post("/v1/embed", files={"images": ("face.png", png(crop))}, data={"occlusion": "auto"})
    assert answer.status_code == 422 and answer.json()["field"] == "occlusion"
    assert "needs an occlusion estimator" in answer.json()["error"]


def _settings():
    from pdsn.runtime.photos import DetectionSettings

    return DetectionSettings(min_face=MIN_FACE)


def test_identity_names_that_display_as_something_else_are_422(client, group):
    for name, shown in (("ali\u200bce", "U+200B"), ("\u202eecila", "U+202E"), ("Zoe\u0308", "NFC")):
        answer = client.post("/v1/identities", json={"identity": name, "images": [_b64(group)], "face": "largest"})
        assert answer.status_code == 422 and answer.json()["field"] == "identity", answer.text
        assert shown in answer.json()["error"]
