"""The occlusion estimator: new occluders, seeded training, thresholds, files, ONNX parity, the shipped one."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from pdsn.cli import main
from pdsn.export.estimator_export import (
    EstimatorGraph,
    EstimatorParityError,
    estimator_parity,
    write_estimator,
)
from pdsn.model.estimator_contract import (
    ESTIMATOR_FILE,
    ESTIMATOR_IMAGE_INPUT,
    ESTIMATOR_OUTPUT,
    cells_from_probabilities,
    check_thresholds,
)
from pdsn.model.estimator_parity import parity_faces
from pdsn.model.grid import NUM_CELLS, cells_from_mask
from pdsn.model.occlusion_net import (
    SHIPPED_ESTIMATOR,
    EstimatorFileError,
    TrainedEstimator,
    load_estimator,
    save_estimator,
)
from pdsn.train.estimator_evaluation import cell_scores
from pdsn.train.occlusion import ESTIMATOR_OCCLUDER_KINDS, OCCLUDER_KINDS, occlude, random_occlusion
from pdsn.train.occlusion_estimator import EstimatorConfig, select_thresholds, train_estimator
from pdsn.train.synthetic import SyntheticFaces

TINY = EstimatorConfig(
    identities=3,
    images_per_identity=4,
    validation_identities=2,
    validation_images_per_identity=3,
    epochs=1,
    batch_size=6,
)


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    generator = SyntheticFaces(3, 2, seed=11)
    return generator.generate()[0], generator.landmarks()


@pytest.fixture(scope="module")
def tiny() -> TrainedEstimator:
    return train_estimator(TINY, progress=False)


# --- occluders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hand", "face_mask"])
def test_new_occluders_replace_their_mask_and_label_by_the_coverage_rule(kind, faces):
    images, landmarks = faces
    for seed in range(6):
        face = images[seed % len(images)]
        result = occlude(face, kind, np.random.default_rng(seed), landmarks=landmarks[seed % len(images)])
        assert result.kind == kind and result.mask.any()
        np.testing.assert_array_equal(result.image[~result.mask], face[~result.mask])
        np.testing.assert_array_equal(result.cells, cells_from_mask(result.mask))
        again = occlude(face, kind, np.random.default_rng(seed), landmarks=landmarks[seed % len(images)])
        np.testing.assert_array_equal(result.image, again.image)


def test_face_masks_cover_nose_and_mouth_not_the_eyes(faces):
    images, landmarks = faces
    for seed in range(6):
        grid = occlude(images[0], "face_mask", np.random.default_rng(seed), landmarks=landmarks[0]).cells.reshape(5, 5)
        assert grid[3:, 1:4].sum() >= 4 and grid[:2].sum() == 0


def test_random_occlusion_takes_the_new_kinds_and_draws_the_old_ones_as_before():
    drawn = {
        random_occlusion(np.zeros((112, 96, 3), np.uint8), np.random.default_rng(s), ("hand",)).kind for s in range(3)
    }
    assert drawn == {"hand"}
    assert ESTIMATOR_OCCLUDER_KINDS[: len(OCCLUDER_KINDS)] == OCCLUDER_KINDS == ("bar", "patch", "sunglasses", "scarf")
    digest = hashlib.sha256()
    for k in range(32):
        result = random_occlusion(np.zeros((112, 96, 3), np.uint8), np.random.default_rng([123, k]))
        digest.update(np.packbits(result.mask).tobytes() + result.cells.tobytes() + result.kind.encode())
    # The draws of the original four kinds before the estimator's kinds were added.
    assert digest.hexdigest() == "173db3f6256df59f68c5ba38a4697a837f415292495e98f5c7b20bc88def2c13"


# --- training and thresholds --------------------------------------------------------------------


def test_training_is_deterministic_from_the_seed_and_thresholds_lie_in_0_1(tiny):
    again = train_estimator(TINY, progress=False)
    for name, tensor in tiny.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    np.testing.assert_array_equal(tiny.thresholds, again.thresholds)
    assert tiny.thresholds.shape == (NUM_CELLS,) and ((tiny.thresholds > 0) & (tiny.thresholds < 1)).all()
    validation = tiny.record["validation"]
    assert set(validation["per_kind"]) == set(ESTIMATOR_OCCLUDER_KINDS) and "clean_false_alarm_rate" in validation


def test_thresholds_keep_clean_false_alarms_under_the_limit():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, NUM_CELLS)) < 0.1).astype(np.float32)
    clean = np.arange(400) < 200
    labels[clean] = 0
    probabilities = np.clip(labels * 0.7 + rng.random(labels.shape) * 0.4, 0, 1)
    thresholds = select_thresholds(probabilities, labels, clean, max_clean_false_alarm=0.05)
    assert (probabilities[clean] >= thresholds).any(axis=1).mean() <= 0.05
    assert cell_scores(probabilities[~clean] >= thresholds, labels[~clean])["f1"] > 0.5
    probabilities[:20, 4] = 1.0  # certain false alarms: no threshold below 1 clears them
    capped = select_thresholds(probabilities, labels, clean, max_clean_false_alarm=0.05)
    assert capped[4] == np.float32(0.999) and (capped < 1).all()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, np.nan])
def test_a_threshold_outside_0_1_is_refused(bad, tiny):
    thresholds = np.full(NUM_CELLS, 0.5)
    thresholds[7] = bad
    with pytest.raises(ValueError, match=r"thresholds\[7\].*strictly between 0 and 1"):
        check_thresholds(thresholds)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        TrainedEstimator(tiny.model, thresholds)
    with pytest.raises(ValueError, match=r"shape \(25,\)"):
        cells_from_probabilities(np.zeros((1, NUM_CELLS)), thresholds[:24])


def test_saved_estimators_load_and_mismatched_files_are_refused(tiny, tmp_path, faces):
    path, sidecar = save_estimator(tmp_path / "occlusion_estimator.pth", tiny)
    loaded = load_estimator(path)
    np.testing.assert_array_equal(loaded.thresholds, tiny.thresholds)
    np.testing.assert_array_equal(loaded.probabilities(faces[0]), tiny.probabilities(faces[0]))
    assert loaded.record["validation"] == json.loads(json.dumps(tiny.record["validation"]))

    description = json.loads(sidecar.read_text())
    description["thresholds"][3] = 1.2
    sidecar.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"thresholds\[3\] is 1.2"):
        load_estimator(path)
    save_estimator(path, tiny)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(EstimatorFileError, match="thresholds were chosen for other weights"):
        load_estimator(path)


def test_a_folder_without_usable_faces_is_refused(tmp_path, capsys):
    folder = tmp_path / "crops"
    (folder / "someone").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "someone" / "small.png")
    (folder / "someone" / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"0 usable face\(s\) \(2 image file\(s\), 2 unusable"):
        train_estimator(EstimatorConfig(data=str(folder)), progress=False)
    assert main(["train-occlusion", "--data", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "needs at least 2 aligned" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- ONNX export --------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch_and_a_broken_export_fails_the_gate(tiny, tmp_path):
    entry = write_estimator(tiny, tmp_path)
    model_path = tmp_path / ESTIMATOR_FILE
    graph = onnx.load(str(model_path)).graph
    assert [i.name for i in graph.input] == [ESTIMATOR_IMAGE_INPUT] and graph.input[0].type.tensor_type.elem_type == 2
    assert [o.name for o in graph.output] == [ESTIMATOR_OUTPUT]
    assert entry["parity"]["passed"] and entry["parity"]["max_abs_error"] <= 1e-4
    assert entry["contract"]["thresholds"] == [round(float(t), 6) for t in tiny.thresholds]
    assert json.loads((tmp_path / entry["parity"]["report"]).read_text())["cell_agreement"] == 1.0

    proto = onnx.load(str(model_path))
    bias = next(i for i in proto.graph.initializer if tuple(i.dims) == (NUM_CELLS,))
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1.0, bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    report = estimator_parity(tiny, broken, parity_faces())
    assert not report["passed"] and "max |probability error|" in report["failures"][0]


def test_a_failed_gate_leaves_no_estimator_file(tiny, tmp_path, monkeypatch):
    def without_normalisation(self, image):
        return torch.sigmoid(self.model(image.to(torch.float32).permute(0, 3, 1, 2)))

    monkeypatch.setattr(EstimatorGraph, "forward", without_normalisation)
    with pytest.raises(EstimatorParityError, match="does not reproduce PyTorch on 16 faces: max"):
        write_estimator(tiny, tmp_path)
    assert not (tmp_path / ESTIMATOR_FILE).exists() and not (tmp_path / "reports").exists()


# --- the shipped estimator ----------------------------------------------------------------------


def test_the_shipped_estimator_loads_with_its_recorded_metrics(tmp_path):
    estimator = load_estimator()
    assert SHIPPED_ESTIMATOR.stat().st_size + SHIPPED_ESTIMATOR.with_suffix(".json").stat().st_size < 2_000_000
    validation = estimator.record["validation"]
    assert set(validation["per_kind"]) == set(ESTIMATOR_OCCLUDER_KINDS)
    assert validation["all"]["f1"] > 0.8 and validation["clean_false_alarm_rate"] <= 0.05
    assert estimator.record["network"]["flops_per_image"] < 0.05 * 10.8e9
    evaluation = json.loads(SHIPPED_ESTIMATOR.with_name("occlusion_estimator_evaluation.json").read_text())
    assert {"cells", "verification", "identification", "gains", "goals"} <= set(evaluation)
    copy = shutil.copy(SHIPPED_ESTIMATOR, tmp_path / SHIPPED_ESTIMATOR.name)
    shutil.copy(SHIPPED_ESTIMATOR.with_suffix(".json"), tmp_path)
    assert load_estimator(copy).predict_cells(parity_faces(4)).shape == (4, NUM_CELLS)
