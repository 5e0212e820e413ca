"""The torch-free runtime: embeddings match PyTorch, inputs are checked, bundles are verified."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pdsn.model.bundle_format import BundleFormatError
from pdsn.model.grid import cells_to_vector
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import BackendUnavailableError, BundleIntegrityError, Recognizer


@pytest.fixture(scope="module")
def recognizer(tiny_bundle):
    with Recognizer.open(tiny_bundle) as rec:
        yield rec


@pytest.fixture(scope="module")
def float_recognizer(tiny_float_bundle):
    with Recognizer.open(tiny_float_bundle) as rec:
        yield rec


def _reference(tiny_checkpoint, tiny_dictionary_file, faces, occlusion):
    from pdsn.export.parity import pytorch_embeddings
    from pdsn.model.checkpoint import load_recognition_model
    from pdsn.model.dictionary import MaskDictionary

    model, _ = load_recognition_model(tiny_checkpoint)
    dictionary = MaskDictionary(np.load(tiny_dictionary_file), None, None, "t")
    return pytorch_embeddings(model, faces, occlusion, dictionary)


def _cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_matches_pytorch(recognizer, tiny_checkpoint, tiny_dictionary_file):
    faces = seeded_faces(4, seed=9)
    occlusion = np.stack([cells_to_vector(c) for c in ([], [3], [10, 11, 12, 13], range(25))])
    out = recognizer.embed(faces, occlusion)
    reference = _reference(tiny_checkpoint, tiny_dictionary_file, faces, occlusion)
    assert out.shape == (4, 512) and out.dtype == np.float32
    assert _cosine(out, reference).min() >= 0.99999


def test_large_batches_are_chunked(tiny_bundle):
    faces = seeded_faces(7, seed=1)
    with Recognizer.open(tiny_bundle, max_batch=3) as small, Recognizer.open(tiny_bundle) as whole:
        np.testing.assert_allclose(small.embed(faces), whole.embed(faces), rtol=1e-5, atol=1e-5)


def test_occlusion_forms_agree(recognizer):
    faces = seeded_faces(2, seed=2)
    as_ids = recognizer.embed(faces, [10, 11, 12, 13])
    np.testing.assert_array_equal(as_ids, recognizer.embed(faces, {13, 12, 11, 10}))
    np.testing.assert_array_equal(as_ids, recognizer.embed(faces, cells_to_vector([10, 11, 12, 13])))
    np.testing.assert_array_equal(
        as_ids, recognizer.embed(faces, [[10, 11, 12, 13], cells_to_vector([10, 11, 12, 13])])
    )
    per_image = recognizer.embed(faces, [[], [20, 21, 22, 23, 24]])
    np.testing.assert_array_equal(per_image[0], recognizer.embed(faces[:1])[0])
    np.testing.assert_array_equal(per_image[1], recognizer.embed(faces[1:], [20, 21, 22, 23, 24])[0])
    assert not np.allclose(per_image[0], as_ids[0])


def test_single_image_and_list_of_images(recognizer):
    faces = seeded_faces(2, seed=4)
    np.testing.assert_array_equal(recognizer.embed(faces[0]), recognizer.embed(faces[:1]))
    np.testing.assert_array_equal(recognizer.embed(list(faces)), recognizer.embed(faces))


def test_verify_masks_both_faces_with_the_union(recognizer):
    a, b = seeded_faces(2, seed=5)
    result = recognizer.verify(a, b, occlusion_a=[1], occlusion_b=[10, 11])
    assert result.occluded_cells == [1, 10, 11] and result.match is None
    ea, eb = recognizer.embed(np.stack([a, b]), [1, 10, 11])
    assert result.score == pytest.approx(float(_cosine(ea[None], eb[None])[0]), abs=1e-6)
    same = recognizer.verify(a, a, occlusion_b=[10, 11, 12, 13], threshold=0.5)
    assert same.score == pytest.approx(1.0, abs=1e-5) and same.match is True


def test_float_bundle_takes_normalised_nchw_and_l2_normalises(float_recognizer, recognizer):
    faces = seeded_faces(2, seed=6)
    x = ((faces.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - 0.5) / 0.5
    out = float_recognizer.embed(x, [4])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    raw = recognizer.embed(faces, [4])
    assert _cosine(out, raw).min() >= 0.99999


def test_landmark_alignment_path(recognizer):
    from pdsn.model.alignment import TEMPLATE_112X96

    face = seeded_faces(1, seed=7)[0]
    canvas = np.zeros((200, 180, 3), np.uint8)
    canvas[40:152, 50:146] = face
    landmarks = TEMPLATE_112X96 + np.array([50.0, 40.0])
    aligned = recognizer.embed([canvas], landmarks=[landmarks])
    assert _cosine(aligned, recognizer.embed(face))[0] >= 0.999


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (np.zeros((112, 96, 3), np.float32), TypeError, "dtype float32, expected uint8"),
        (np.zeros((2, 112, 96, 1), np.uint8), ValueError, "1 channels, expected 3"),
        (np.zeros((112, 96, 4), np.uint8), ValueError, "4 channels, expected 3"),
        (np.zeros((3, 112, 96), np.uint8), ValueError, "looks channels-first"),
        (np.zeros((0, 112, 96, 3), np.uint8), ValueError, "empty batch"),
        ([], ValueError, "empty batch"),
        (np.zeros((112, 96), np.uint8), ValueError, "got shape \\(112, 96\\)"),
        (
            [np.zeros((112, 96, 3), np.uint8), np.zeros((100, 96, 3), np.uint8)],
            ValueError,
            "images\\[1\\]: no face found",
        ),
        ("face.png", FileNotFoundError, "no such file 'face.png'"),
    ],
)
def test_bad_images_are_named(recognizer, images, error, message):
    with pytest.raises(error, match=message):
        recognizer.embed(images)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_input(float_recognizer, bad):
    x = np.zeros((1, 3, 112, 96), np.float32)
    x[0, 1, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        float_recognizer.embed(x)


@pytest.mark.parametrize(
    ("occlusion", "message"),
    [
        (np.zeros(24), "25"),
        (np.full(25, 0.5), "0.5"),
        (np.zeros((3, 25)), "3 occlusion vectors for 2 images"),
        ([25], "25"),
        ([-1], "-1"),
        ([3.0], "3.0"),
        ([1, 1], "more than once"),
        ([0, 1] * 12 + [0], "pass it as a numpy array"),
        ([[1], [2], [3]], "3 entries for 2 images"),
        ("10,11", "got str"),
    ],
)
def test_bad_occlusion_is_named(recognizer, occlusion, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        recognizer.embed(seeded_faces(2, seed=0), occlusion)
    assert "occlusion" in str(error.value)


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "copy")


def test_tampered_file_is_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="model.onnx: SHA-256 .*modified after export"):
        Recognizer.open(copy)


def test_truncated_and_missing_files_are_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    (copy / "dictionary.npy").write_bytes((copy / "dictionary.npy").read_bytes()[:-10])
    (copy / "reports" / "parity.json").unlink()
    with pytest.raises(BundleIntegrityError) as error:
        Recognizer.open(copy)
    assert "dictionary.npy: " in str(error.value) and "truncated" in str(error.value)
    assert "reports/parity.json: missing" in str(error.value)


def test_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Recognizer.open(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        Recognizer.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        Recognizer.open(tmp_path)


def test_future_format_version_is_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="format_version 99"):
        Recognizer.open(copy)


def test_non_binary_dictionary_in_bundle_is_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    np.save(copy / "dictionary.npy", np.full((25, 32, 7, 6), 0.5, np.float32))
    with pytest.raises(ValueError, match="binar"):
        Recognizer.open(copy, verify=False)


def test_cuda_without_a_gpu_is_an_error_not_a_fallback(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        Recognizer.open(tiny_bundle, device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tensorflow"}, "backend 'tensorflow'"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_bad_open_arguments(tiny_bundle, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recognizer.open(tiny_bundle, **kwargs)


def test_closed_recognizer_refuses_work(tiny_bundle):
    rec = Recognizer.open(tiny_bundle)
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.embed(seeded_faces(1))
