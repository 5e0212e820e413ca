"""Stage 0: synthetic identities, occluders, the CosFace head, recognition training and saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdsn.model.alignment import TEMPLATE_112X96
from pdsn.model.checkpoint import load_recognition_model, read_state_dict
from pdsn.model.grid import NUM_CELLS, SCARF_CELLS, cell_bounds, cells_from_mask
from pdsn.model.network import Architecture, normalize_faces
from pdsn.train.cosface import MarginCosineProduct
from pdsn.train.occlusion import OCCLUDER_KINDS, occlude, random_occlusion
from pdsn.train.stage0 import (
    CLASSIFIER_FILENAME,
    MODEL_FILENAME,
    TINY_ARCHITECTURE,
    embedding_separation,
    save_stage0,
    train_recognition,
    train_tiny_model,
)
from pdsn.train.synthetic import SyntheticFaces, synthetic_faces

MICRO = Architecture("lresnet-ir-micro", (1, 1, 1, 1), (4, 4, 8, 8, 16))


@pytest.fixture(scope="module")
def tiny():
    return train_tiny_model(seed=0)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return SyntheticFaces(1, 1, seed=3).generate()[0][0]


# --- synthetic identities -------------------------------------------------------------------


def test_generator_shapes_and_determinism():
    images, labels = SyntheticFaces(4, 3, seed=5).generate()
    assert images.shape == (12, 112, 96, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    again, _ = synthetic_faces(4, 3, seed=5)
    np.testing.assert_array_equal(images, again)
    other, _ = synthetic_faces(4, 3, seed=6)
    assert not np.array_equal(images, other)
    assert images.std() > 20, "images should have contrast, not be flat"


def test_identity_look_does_not_depend_on_how_many_are_generated():
    few, _ = SyntheticFaces(3, 4, seed=7).generate()
    many, _ = SyntheticFaces(9, 4, seed=7).generate()
    np.testing.assert_array_equal(few, many[:12])
    fewer_images, _ = SyntheticFaces(3, 2, seed=7).generate()
    first_two = few.reshape(3, 4, 112, 96, 3)[:, :2].reshape(6, 112, 96, 3)
    np.testing.assert_array_equal(fewer_images, first_two)


def test_images_of_an_identity_vary_but_resemble_each_other():
    images, labels = SyntheticFaces(30, 4, seed=11).generate()
    assert not np.array_equal(images[0], images[1]), "pose, light and noise vary per image"
    # Blur to 8x8 blocks and keep the face region: same identity correlates more than different.
    blocks = images.astype(np.float64).reshape(len(images), 14, 8, 12, 8, 3).mean(axis=(2, 4))
    features = blocks[:, 2:13, 2:10].reshape(len(images), -1)
    features -= features.mean(axis=1, keepdims=True)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    similarity = features @ features.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert similarity[same & off_diagonal].mean() - similarity[~same].mean() > 0.15
    np.fill_diagonal(similarity, -np.inf)
    nearest_same = labels[similarity.argmax(axis=1)] == labels
    assert nearest_same.mean() > 0.3  # chance is 1/30


def test_landmarks_follow_the_pose_near_the_template():
    faces = SyntheticFaces(5, 4, seed=2)
    points = faces.landmarks()
    assert points.shape == (20, 5, 2)
    assert np.abs(points - TEMPLATE_112X96).max() < 12
    assert points.std(axis=0).min() > 0.3, "pose jitter moves the landmarks"


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"num_identities": 0, "images_per_identity": 1}, ValueError, "num_identities must be an integer >= 1"),
        ({"num_identities": 2, "images_per_identity": 1.5}, TypeError, r"images_per_identity .* got 1.5 \(float\)"),
        ({"num_identities": 2, "images_per_identity": 1, "seed": -1}, ValueError, "seed must be an integer >= 0"),
    ],
)
def test_generator_rejects_bad_arguments(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        SyntheticFaces(**kwargs)


# --- occluders ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", OCCLUDER_KINDS)
def test_occluders_change_exactly_their_mask_and_report_its_cells(kind, face):
    placement = {"cell": 12} if kind in ("bar", "patch") else {}
    result = occlude(face, kind, np.random.default_rng(0), min_coverage=0.4, **placement)
    assert result.kind == kind
    assert result.image.shape == face.shape and result.image.dtype == np.uint8
    assert result.mask.shape == (112, 96) and result.mask.dtype == bool and result.mask.any()
    np.testing.assert_array_equal(result.image[~result.mask], face[~result.mask])
    changed = (result.image != face).any(axis=-1)
    assert changed[result.mask].mean() > 0.9
    np.testing.assert_array_equal(result.cells, cells_from_mask(result.mask, 0.4))
    again = occlude(face, kind, np.random.default_rng(0), min_coverage=0.4, **placement)
    np.testing.assert_array_equal(result.image, again.image)


@pytest.mark.parametrize("kind", ["bar", "patch"])
def test_cell_occluders_cover_that_cell_only(kind, face):
    rng = np.random.default_rng(1)
    for cell in range(NUM_CELLS):
        result = occlude(face, kind, rng, cell=cell)
        assert np.flatnonzero(result.cells).tolist() == [cell]
        x0, y0, x1, y1 = cell_bounds(cell)
        assert result.mask[y0:y1, x0:x1].all()


def test_box_occluder_covers_the_box_exactly(face):
    result = occlude(face, "bar", np.random.default_rng(0), box=(10, 20, 50, 40))
    expected = np.zeros((112, 96), dtype=bool)
    expected[20:40, 10:50] = True
    np.testing.assert_array_equal(result.mask, expected)


def test_sunglasses_cover_the_eye_row_and_scarf_the_bottom_row(face):
    rng = np.random.default_rng(4)
    for _ in range(5):
        glasses = occlude(face, "sunglasses", rng).cells.reshape(5, 5)
        assert glasses[2].sum() >= 2 and glasses[[0, 1, 3, 4]].sum() == 0
        scarf = occlude(face, "scarf", rng).cells
        assert scarf[list(SCARF_CELLS)].all() and scarf[:15].sum() == 0


def test_random_occlusion_is_deterministic_and_uses_the_kinds_given(face):
    first = [random_occlusion(face, np.random.default_rng(s)) for s in range(8)]
    second = [random_occlusion(face, np.random.default_rng(s)) for s in range(8)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
    assert {o.kind for o in first} <= set(OCCLUDER_KINDS)
    only_scarves = random_occlusion(face, np.random.default_rng(0), kinds=("scarf",))
    assert only_scarves.kind == "scarf"


@pytest.mark.parametrize(
    "kind, kwargs, argument",
    [
        ("bar", {"cell": 25}, "cell"),
        ("bar", {"cell": -1}, "cell"),
        ("hat", {"cell": 3}, "kind"),
        ("patch", {}, "cell"),
        ("patch", {"cell": 3, "box": (0, 0, 5, 5)}, "box"),
        ("bar", {"box": (10, 10, 5, 20)}, "box"),
        ("sunglasses", {"cell": 3}, "cell"),
        ("scarf", {"landmarks": np.zeros((4, 2))}, "landmarks"),
        ("bar", {"cell": 3, "margin": -1}, "margin"),
    ],
)
def test_occlude_rejects_bad_arguments(kind, kwargs, argument, face):
    with pytest.raises(ValueError, match=argument):
        occlude(face, kind, np.random.default_rng(0), **kwargs)


def test_occlude_rejects_a_bad_image():
    with pytest.raises(ValueError, match="image"):
        occlude(np.zeros((112, 96, 3), dtype=np.float32), "bar", np.random.default_rng(0), cell=0)
    with pytest.raises(ValueError, match="image"):
        occlude(np.zeros((112, 112, 3), dtype=np.uint8), "bar", np.random.default_rng(0), cell=0)


# --- CosFace head ---------------------------------------------------------------------------


def test_margin_cosine_product_subtracts_the_margin_on_the_target_only():
    head = MarginCosineProduct(512, 7, s=30.0, m=0.35)
    assert list(head.state_dict()) == ["weight"]
    assert head.state_dict()["weight"].shape == (7, 512)
    embeddings = torch.randn(5, 512) * 3.0
    labels = torch.tensor([0, 6, 2, 2, 4])
    normalize = torch.nn.functional.normalize
    cosine = normalize(embeddings) @ normalize(head.weight).T
    logits = head(embeddings, labels)
    expected = 30.0 * cosine
    expected[torch.arange(5), labels] = 30.0 * (cosine[torch.arange(5), labels] - 0.35)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(head(embeddings), 30.0 * cosine)
    torch.testing.assert_close(head.cosine(embeddings), cosine)


@pytest.mark.parametrize("labels", [torch.tensor([0, 7]), torch.tensor([0]), torch.tensor([0.0, 1.0])])
def test_margin_cosine_product_rejects_bad_arguments(labels):
    head = MarginCosineProduct(512, 7)
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 512), labels)
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(2, 64))
    with pytest.raises(ValueError, match="out_features"):
        MarginCosineProduct(512, 0)


# --- training -------------------------------------------------------------------------------


def test_train_recognition_is_seeded_and_leaves_the_global_rng_alone():
    images, labels = synthetic_faces(3, 3, seed=1)
    state = torch.get_rng_state()
    runs = [
        train_recognition(
            MICRO, images, labels, epochs=2, batch_size=4, lr=0.05, seed=3, augment_occlusion=True, progress=False
        )
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    (model_a, head_a, history), (model_b, head_b, _) = runs
    assert not model_a.training and not head_a.training
    assert [h.epoch for h in history] == [1, 2] and all(np.isfinite(h.loss) for h in history)
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    assert torch.equal(head_a.weight, head_b.weight)
    assert head_a.weight.shape == (3, 512)


@pytest.mark.parametrize(
    "change, argument",
    [
        ({"images": np.zeros((4, 112, 96, 3), dtype=np.float32)}, "images"),
        ({"labels": np.zeros(3, dtype=np.int64)}, "labels"),
        ({"labels": np.array([0, 1, -1, 2])}, "labels"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_train_recognition_rejects_bad_arguments(change, argument):
    arguments = {
        "architecture": MICRO,
        "images": np.zeros((4, 112, 96, 3), dtype=np.uint8),
        "labels": np.array([0, 1, 0, 1]),
        "epochs": 1,
        "batch_size": 2,
        "lr": 0.1,
        "seed": 0,
        "progress": False,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=argument):
        train_recognition(**arguments)


def test_tiny_model_is_trained_and_separates_held_out_identities(tiny):
    assert tiny.model.architecture == TINY_ARCHITECTURE
    assert not tiny.model.training
    assert len(tiny.holdout_images) == len(tiny.holdout_labels) == 80
    separation = embedding_separation(tiny.model, tiny.holdout_images, tiny.holdout_labels)
    assert separation > 0.3, f"held-out same-minus-different cosine is only {separation:.3f}"
    # BN running statistics were accumulated in train mode on the faces, not left at 0 / 1.
    bn = tiny.model.bn1
    assert int(bn.num_batches_tracked) > 0
    assert bn.running_mean.abs().max() > 1e-3 and (bn.running_var - 1).abs().max() > 1e-3


def test_save_stage0_round_trips_through_the_reference_loader(tiny, tmp_path):
    model_path, classifier_path = save_stage0(tmp_path / "stage0", tiny.model, tiny.classifier, epoch=6)
    assert model_path.name == MODEL_FILENAME and classifier_path.name == CLASSIFIER_FILENAME
    raw = torch.load(model_path, weights_only=True)
    assert set(raw) == {"epoch", "optim_state_dict", "model_state_dict"} and raw["epoch"] == 6
    loaded, info = load_recognition_model(model_path)
    assert info.epoch == 6 and loaded.architecture.layers == TINY_ARCHITECTURE.layers
    assert loaded.architecture.widths == TINY_ARCHITECTURE.widths
    x = normalize_faces(tiny.holdout_images[:8])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny.model(x), rtol=0, atol=0)
    classifier_state = torch.load(classifier_path, weights_only=True)
    assert list(classifier_state) == ["weight"]
    assert torch.equal(classifier_state["weight"], tiny.classifier.weight.detach())
    state, _ = read_state_dict(model_path)
    assert not any(key.startswith("module.") for key in state)
