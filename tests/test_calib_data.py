"""Calibration sources: folders, list files, synthetic; deterministic sampling; every bad source named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pdsn.calib.data import load_face_sets
from pdsn.model.sample_faces import OCCLUSION_MIX, occlusion_mix, seeded_faces


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    for i, face in enumerate(seeded_faces(24, seed=5)):
        (folder / f"id{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(face).save(folder / f"id{i % 3}" / f"{i:03d}.png")
    return folder


def test_folder_source_is_deterministic_and_disjoint(face_folder):
    calib, held = load_face_sets(face_folder, samples=16, holdout=8, seed=3, progress=False)
    again, _ = load_face_sets(face_folder, samples=16, holdout=8, seed=3, progress=False)
    other, _ = load_face_sets(face_folder, samples=16, holdout=8, seed=4, progress=False)
    assert calib.images.shape == (16, 112, 96, 3) and held.images.shape == (8, 112, 96, 3)
    assert calib.fingerprint == again.fingerprint != other.fingerprint
    calib_rows = {row.tobytes() for row in calib.images}
    assert not any(row.tobytes() in calib_rows for row in held.images)
    assert not calib.synthetic and "16 of 24" in calib.source


def test_list_file_source(face_folder, tmp_path):
    listing = tmp_path / "list.txt"
    paths = sorted(face_folder.rglob("*.png"))
    listing.write_text("\n".join(str(p) for p in paths[:12]) + "\n\n")
    calib, held = load_face_sets(listing, samples=8, holdout=4, progress=False)
    assert len(calib) == 8 and len(held) == 4


def test_synthetic_source_is_labelled():
    calib, held = load_face_sets("synthetic", samples=4, holdout=3, seed=0)
    assert calib.synthetic and held.synthetic and "synthetic" in calib.source
    assert calib.fingerprint != held.fingerprint


def test_occlusion_mix_follows_traffic_proportions():
    vectors = occlusion_mix(4000, seed=1)
    counts = vectors.sum(axis=1)
    shares = {
        "none": (counts == 0).mean(),
        "one-cell": (counts == 1).mean(),
        "sunglasses": (counts == 4).mean(),
        "bottom-row": (counts == 5).mean(),
    }
    for name, share in OCCLUSION_MIX:
        assert shares[name] == pytest.approx(share, abs=0.03)
    assert np.array_equal(vectors, occlusion_mix(4000, seed=1))


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _save(d / "a.png", np.zeros((120, 96, 3), np.uint8)), "96x120 \\(WxH\\), expected aligned 96x112"),
        (lambda d: _save(d / "a.png", np.zeros((112, 96, 3), np.uint8), "L"), "colour mode L, expected RGB"),
        (lambda d: _save(d / "a.png", np.zeros((112, 96, 3), np.uint8), "RGBA"), "colour mode RGBA"),
        (lambda d: (d / "a.jpg").write_bytes(b"not an image"), "could not be read"),
    ],
)
def test_bad_sources_are_named(tmp_path, make, message):
    make(tmp_path)
    for extra in range(3):
        _save(tmp_path / f"good{extra}.png", seeded_faces(1, seed=extra)[0])
    with pytest.raises(ValueError, match=message):
        load_face_sets(tmp_path, samples=2, holdout=2, progress=False)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images"):
        load_face_sets(tmp_path / "empty", samples=1, holdout=1)


def test_fewer_images_than_asked(face_folder):
    with pytest.raises(ValueError, match="found 24 images, but 512 calibration samples plus 8 held-out"):
        load_face_sets(face_folder, samples=512, holdout=8)


def test_missing_source_and_listed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        load_face_sets(tmp_path / "nowhere", samples=1, holdout=1)
    listing = tmp_path / "list.txt"
    listing.write_text("missing/a.png\n")
    with pytest.raises(FileNotFoundError, match="1 listed images do not exist"):
        load_face_sets(listing, samples=1, holdout=1)
