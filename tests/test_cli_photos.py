"""The CLI on photos: `pdsn detect` (and its drawing), `embed`, `compare` and `gallery` finding faces themselves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.cli import main
from pdsn.runtime import Recognizer

PEOPLE = 6


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_detect_prints_faces_and_draws_them(tiny_bundle, tmp_path, capsys):
    drawing = tmp_path / "faces.png"
    argv = ["detect", "--bundle", str(tiny_bundle), str(group_photo()), "--min-face", "60", "--annotate", str(drawing)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    faces = _json_lines(out)
    assert f"{PEOPLE} face(s) of at least 60 px" in out and len(faces) == PEOPLE
    assert [f["face"] for f in faces] == list(range(PEOPLE))
    with Recognizer.open(tiny_bundle) as recognizer:
        expected = recognizer.detect(group_photo(), min_face=60)
    assert np.allclose([f["box"] for f in faces], [f.box for f in expected], atol=0.01)
    drawn = np.asarray(Image.open(drawing).convert("RGB"))
    original = np.asarray(Image.open(group_photo()).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any(axis=2).mean() > 0.001


def test_detect_refuses_bad_thresholds_and_one_file_for_many_photos(tiny_bundle, tmp_path, capsys):
    photo = str(group_photo())
    assert main(["detect", "--bundle", str(tiny_bundle), photo, "--thresholds", "0.6,0.7"]) == 2
    assert "thresholds must be three probabilities" in capsys.readouterr().err
    assert main(["detect", "--bundle", str(tiny_bundle), photo, photo, "--annotate", str(tmp_path / "x.png")]) == 2
    assert "give a folder" in capsys.readouterr().err


def test_embed_and_compare_photos(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "faces.npy"
    assert main(["embed", "--bundle", str(tiny_bundle), str(group_photo()), "--min-face", "60", "--out", str(out)]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert np.load(out).shape == (PEOPLE, 512) and len(rows) == PEOPLE and all("box" in r for r in rows)
    portrait = str(portrait_photos()[0])
    assert main(["compare", "--bundle", str(tiny_bundle), portrait, portrait, "--threshold", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "face A: " in text and "cosine score 1.0000" in text and "same person" in text


def test_embed_with_your_own_landmarks(tiny_bundle, capsys):
    with Recognizer.open(tiny_bundle) as recognizer:
        face = recognizer.detect(group_photo(), min_face=60)[0]
        expected = recognizer.embed(str(group_photo()), landmarks=face.landmarks)
    points = ",".join(f"{v:.6f}" for v in face.landmarks.ravel())
    assert main(["embed", "--bundle", str(tiny_bundle), str(group_photo()), "--landmarks", points]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert "box" not in row and np.allclose(row["embedding"], expected[0], atol=1e-5)
    with pytest.raises(SystemExit) as exited:
        main(["embed", "--bundle", str(tiny_bundle), str(group_photo()), "--landmarks", "1,2,3"])
    assert exited.value.code == 2 and "expected 10 comma-separated numbers" in capsys.readouterr().err


def test_gallery_enrolls_and_identifies_photos(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "people"
    for index, photo in enumerate(portrait_photos()[:2]):
        (folder / f"person-{index}").mkdir(parents=True)
        shutil.copy(photo, folder / f"person-{index}" / photo.name)
    gallery = str(tmp_path / "g.db")
    common = ["--bundle", str(tiny_bundle), "--gallery", gallery]
    assert main(["gallery", "enroll", *common, str(folder), "--face", "largest", "--min-face", "80"]) == 0
    assert "enrolled 2 identities (2 faces)" in capsys.readouterr().out
    assert main(["gallery", "identify", *common, str(portrait_photos()[1]), "-k", "1", "--min-face", "80"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    assert result["matches"][0]["identity"] == "person-1" and result["matches"][0]["score"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert len(result["box"]) == 4
    crowd = tmp_path / "crowd" / "everyone"
    crowd.mkdir(parents=True)
    shutil.copy(group_photo(), crowd / "t1.jpg")
    assert main(["gallery", "enroll", *common, str(crowd.parent), "--min-face", "60"]) == 2
    assert f"{PEOPLE} faces found, exactly one expected" in capsys.readouterr().err
