"""Evaluation protocols: synthetic and LFW pairs, the occluded protocol, FDM on/off, PyTorch vs bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from factories import TINY, random_binary_dictionary
from PIL import Image
from test_torch_free import BLOCK_TORCH

from pdsn.model.checkpoint import load_recognition_model
from pdsn.model.dictionary import MaskDictionary
from pdsn.model.grid import NUM_CELLS
from pdsn.model.network import normalize_faces
from pdsn.model.protocols import tar_at_far
from pdsn.train.evaluate import (
    BundleEmbedder,
    OccludedSeconds,
    PairSet,
    TorchEmbedder,
    cosine_scores,
    evaluate_embedder,
    evaluation_report,
    format_table,
    lfw_pairs,
    occlude_seconds,
    synthetic_pairs,
    write_report,
)


def lfw_folder(root):
    """10 synthetic identities x 2 crops in LFW's layout and a pairs.txt of 10 same, 10 different pairs."""
    images = synthetic_pairs(num_pairs=20, seed=9, num_identities=10, images_per_identity=2).images
    lines = ["10\t2"]
    for identity in range(10):
        name = f"Person_{identity}"
        (root / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(images[2 * identity + k]).save(root / name / f"{name}_{k + 1:04d}.png")
        lines.append(f"{name}\t1\t2")
        lines.append(f"{name}\t1\tPerson_{(identity + 1) % 10}\t2")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def lfw_arguments(root, report) -> list[str]:
    """``pdsn evaluate``'s arguments for ``lfw_folder(root)``, its report written to ``report``."""
    lfw = lfw_folder(root)
    return ["--pairs", str(lfw / "pairs.txt"), "--root", str(lfw), "--extension", ".png", "--report", str(report)]


class AngleEmbedder:
    """Image k (its pixel [0, 0, 0]) embeds as the unit vector at angle ``angles[k]``.

    An occluded image (pixel [0, 0, 1] == 1) is pushed by ``occlusion_shift`` radians unless its
    occlusion vector is non-zero, as if its FDM removed the corrupted features.
    """

    name = "angles"

    def __init__(self, angles, occlusion_shift=0.0):
        self.angles, self.shift, self.calls = np.asarray(angles), occlusion_shift, []

    def embed(self, images, occlusion):
        self.calls.append((images.copy(), occlusion.copy()))
        theta = self.angles[images[:, 0, 0, 0]]
        corrupted = (images[:, 0, 0, 1] == 1) & ~occlusion.any(axis=1)
        theta = theta + self.shift * corrupted
        return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _angle_pairs(bad_same_pair: int | None = None):
    """40 pairs in 10 folds of (2 same, 2 different); same pairs 0.1 rad apart, different 1.5 rad."""
    angles, first, second, same = [], [], [], []
    for _fold in range(10):
        for is_same in (True, True, False, False):
            base = len(angles)
            gap = 0.1 if is_same else 1.5
            if is_same and len(same) == bad_same_pair:
                gap = 2.0
            angles += [0.0, gap]
            first.append(base)
            second.append(base + 1)
            same.append(is_same)
    images = np.zeros((len(angles), 112, 96, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(angles))
    pairs = PairSet(images, np.array(first), np.array(second), np.array(same), "angles")
    return pairs, np.array(angles)


def _occluded_seconds(pairs: PairSet) -> OccludedSeconds:
    images = pairs.images[pairs.second].copy()
    images[:, 0, 0, 1] = 1
    occlusion = np.zeros((len(pairs), NUM_CELLS), dtype=np.float32)
    occlusion[:, 12] = 1
    return OccludedSeconds(images, occlusion, ("bar",) * len(pairs), 0)


def test_ten_fold_accuracy_of_constructed_scores():
    pairs, angles = _angle_pairs(bad_same_pair=0)
    rows = evaluate_embedder(AngleEmbedder(angles), pairs, _occluded_seconds(pairs))
    clean = rows[0]
    assert (clean["protocol"], clean["fdm"]) == ("clean", None)
    # One same pair of fold 0 scores cos(2.0) < 0: fold 0 gets 3 of 4 right, the others 4 of 4.
    assert clean["accuracy"] == pytest.approx((0.75 + 9) / 10)
    assert clean["std"] == pytest.approx(np.std([0.75] + [1.0] * 9))
    scores = np.cos(angles[pairs.second] - angles[pairs.first])
    assert clean["tar_at_far"]["0.1"] == pytest.approx(tar_at_far(scores, pairs.same, 0.1))
    assert clean["tar_at_far"]["0.1"] == pytest.approx(19 / 20)


def test_occluded_protocol_applies_the_second_images_fdm_to_both():
    pairs, angles = _angle_pairs()
    occluded = _occluded_seconds(pairs)
    embedder = AngleEmbedder(angles, occlusion_shift=2.5)
    rows = evaluate_embedder(embedder, pairs, occluded)
    by_fdm = {row["fdm"]: row for row in rows if row["protocol"] == "occluded"}
    assert by_fdm[True]["accuracy"] == 1.0
    assert by_fdm[False]["accuracy"] < 0.75, "the corrupted embeddings must hurt without FDM"
    calls = {
        (len(images), bool(occlusion.any()), bool(images[:, 0, 0, 1].any())): (images, occlusion)
        for images, occlusion in embedder.calls
    }
    first_images, first_occlusion = calls[(len(pairs), True, False)]
    np.testing.assert_array_equal(first_images, pairs.images[pairs.first])
    np.testing.assert_array_equal(first_occlusion, occluded.occlusion)
    second_images, second_occlusion = calls[(len(pairs), True, True)]
    np.testing.assert_array_equal(second_images, occluded.images)
    np.testing.assert_array_equal(second_occlusion, occluded.occlusion)
    assert not calls[(len(pairs), False, True)][1].any(), "without FDM the occluded image is embedded plainly"


def test_report_table_and_files(tmp_path):
    pairs, angles = _angle_pairs()
    report = evaluation_report([AngleEmbedder(angles)], pairs, _occluded_seconds(pairs), fars=(0.1, 0.05))
    assert report["pairs"] == {"source": "angles", "count": 40, "same": 20, "different": 20, "folds": 10}
    assert report["occlusion"]["kinds"] == {"bar": 40} and report["occlusion"]["mean_occluded_cells"] == 1.0
    table = format_table(report)
    assert "TAR@FAR=0.1 | TAR@FAR=0.05" in table
    assert "| angles | clean | n/a (no occluded cell) | 100.00% ± 0.00 |" in table
    assert "| angles | occluded | off |" in table and "| angles | occluded | on |" in table
    write_report(report, tmp_path / "r.json", tmp_path / "r.md")
    assert "40 pairs (20 same, 20 different, 10 folds)" in (tmp_path / "r.md").read_text()


def test_all_pairs_of_one_kind_are_refused():
    pairs, angles = _angle_pairs()
    one_kind = PairSet(pairs.images, pairs.first, pairs.second, np.ones(len(pairs), dtype=bool), "all-same")
    with pytest.raises(
        ValueError,
        match=r"all-same: all 40 pairs are same-identity; verification accuracy needs "
        r"both kinds",
    ):
        evaluate_embedder(AngleEmbedder(angles), one_kind, _occluded_seconds(pairs))


def test_synthetic_pairs_follow_the_lfw_layout():
    pairs = synthetic_pairs(num_pairs=40, seed=3, num_identities=12, images_per_identity=3)
    assert len(pairs) == 40 and pairs.images.shape == (36, 112, 96, 3)
    np.testing.assert_array_equal(pairs.same, np.tile([True, True, False, False], 10))
    identity_first, identity_second = pairs.first // 3, pairs.second // 3
    assert (identity_first[pairs.same] == identity_second[pairs.same]).all()
    assert (identity_first[~pairs.same] != identity_second[~pairs.same]).all()
    assert (pairs.first != pairs.second).all()
    again = synthetic_pairs(num_pairs=40, seed=3, num_identities=12, images_per_identity=3)
    np.testing.assert_array_equal(again.first, pairs.first)
    with pytest.raises(ValueError, match="multiple of 20"):
        synthetic_pairs(num_pairs=30)


def test_occlude_seconds_is_seeded_and_reports_cells():
    pairs = synthetic_pairs(num_pairs=20, seed=1, num_identities=5, images_per_identity=2)
    occluded = occlude_seconds(pairs, seed=4)
    assert occluded.images.shape == (20, 112, 96, 3) and occluded.occlusion.shape == (20, NUM_CELLS)
    assert (occluded.occlusion.sum(axis=1) >= 1).all()
    assert ((occluded.images != pairs.images[pairs.second]).any(axis=(1, 2, 3))).all()
    np.testing.assert_array_equal(occlude_seconds(pairs, seed=4).images, occluded.images)


def test_lfw_pairs_read_from_a_folder(tmp_path):
    faces = synthetic_pairs(num_pairs=20, seed=2, num_identities=3, images_per_identity=2).images
    for k, name in enumerate(("Ann_A", "Ann_A", "Bob_B", "Bob_B")):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(faces[k]).save(tmp_path / name / f"{name}_{k % 2 + 1:04d}.png")
    listing = tmp_path / "pairs.txt"
    listing.write_text("1\t2\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t2\n")
    pairs = lfw_pairs(listing, tmp_path, extension=".png")
    assert pairs.same.tolist() == [True, False] and pairs.images.shape == (3, 112, 96, 3)
    np.testing.assert_array_equal(pairs.images[pairs.second[1]], faces[3])
    listing.write_text("1\t1\nAnn_A\t1\t2\n")
    with pytest.raises(ValueError, match="all 1 pairs are same-identity"):
        lfw_pairs(listing, tmp_path, extension=".png")


@pytest.fixture(scope="module")
def tiny_torch_embedder(tiny_checkpoint, tiny_dictionary_file):
    model, _ = load_recognition_model(tiny_checkpoint)
    dictionary = MaskDictionary(np.load(tiny_dictionary_file), None, None, "test")
    return TorchEmbedder(model, dictionary)


def test_torch_embedder_multiplies_the_combined_fdm(tiny_torch_embedder):
    faces = synthetic_pairs(num_pairs=20, seed=0, num_identities=2, images_per_identity=2).images
    occlusion = np.zeros((4, NUM_CELLS), dtype=np.float32)
    occlusion[1, [10, 11]] = 1
    occlusion[3, 20] = 1
    out = tiny_torch_embedder.embed(faces, occlusion)
    model, dictionary = tiny_torch_embedder.model, tiny_torch_embedder.dictionary
    with torch.no_grad():
        expected = model(normalize_faces(faces), torch.from_numpy(dictionary.combine(occlusion)))
        plain = model(normalize_faces(faces))
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[[0, 2]], plain.numpy()[[0, 2]], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[1], plain.numpy()[1])


def test_torch_embedder_refuses_a_dictionary_of_another_width(tiny_checkpoint):
    model, _ = load_recognition_model(tiny_checkpoint)
    wrong = MaskDictionary(random_binary_dictionary((64, 7, 6)), None, None, "test")
    with pytest.raises(ValueError, match=r"feature maps of shape \(64, 7, 6\), but the model's trunk outputs"):
        TorchEmbedder(model, wrong)


def test_bundle_evaluation_reproduces_pytorch(tiny_bundle, tiny_torch_embedder):
    assert tiny_torch_embedder.model.architecture.widths == TINY.widths
    pairs = synthetic_pairs(num_pairs=40, seed=5, num_identities=10, images_per_identity=2)
    occluded = occlude_seconds(pairs, seed=5)
    bundle = BundleEmbedder.open(tiny_bundle, "onnxruntime", "fp32")
    try:
        assert bundle.name == "onnxruntime fp32"
        report = evaluation_report([tiny_torch_embedder, bundle], pairs, occluded)
        images = occluded.images[:6]
        np.testing.assert_allclose(
            cosine_scores(
                bundle.embed(images, occluded.occlusion[:6]), tiny_torch_embedder.embed(images, occluded.occlusion[:6])
            ),
            1.0,
            atol=1e-5,
        )
    finally:
        bundle.close()
    torch_rows, bundle_rows = report["rows"][:3], report["rows"][3:]
    for ours, theirs in zip(torch_rows, bundle_rows):
        assert (ours["protocol"], ours["fdm"]) == (theirs["protocol"], theirs["fdm"])
        assert theirs["accuracy"] == pytest.approx(ours["accuracy"], abs=1 / 40)


def test_cli_evaluates_a_bundle_without_torch(tiny_bundle, tmp_path):
    argv = [
        "evaluate",
        "--bundle",
        str(tiny_bundle),
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
        *lfw_arguments(tmp_path / "lfw", tmp_path / "r.json"),
    ]
    code = BLOCK_TORCH + f"import sys\nfrom pdsn.cli import main\nsys.exit(main({argv!r}))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| onnxruntime fp32 | occluded | on |" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairs"]["count"] == 20 and len(report["rows"]) == 3
