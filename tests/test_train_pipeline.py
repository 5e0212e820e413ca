"""The training pipeline: data readers, stage 1 (PDSN per cell), dictionary extraction, stage 2, CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import lfw_arguments

from pdsn.cli import main
from pdsn.model.checkpoint import CheckpointError, load_pdsn_model, load_recognition_model
from pdsn.model.dictionary import (
    MaskDictionary,
    binarize_by_tau,
    load_dictionary,
    load_mean_masks,
    read_mean_mask_txt,
)
from pdsn.model.grid import NUM_CELLS
from pdsn.model.network import Architecture, PDSNNetwork, normalize_faces
from pdsn.train.data import (
    occlude_cell,
    read_identity_folders,
    read_pair_list,
    synthetic_identities,
)
from pdsn.train.demo_model import DemoConfig, train_demo
from pdsn.train.dictionary_extraction import (
    extract_mean_masks,
    mean_mask,
    write_dictionary,
)
from pdsn.train.features import CellFeatureCache, PairFeatures
from pdsn.train.stage0 import load_classifier, save_stage0, torch_threads, train_recognition
from pdsn.train.stage1 import (
    Stage1Config,
    checkpoint_name,
    find_pdsn_checkpoints,
    save_pdsn,
    train_cells,
    train_pdsn,
)
from pdsn.train.stage2 import Stage2Config, finetune

MICRO = Architecture("lresnet-ir-micro", (1, 1, 1, 1), (4, 4, 8, 8, 16))
OTHER_WIDTH = Architecture("lresnet-ir-micro-wide", (1, 1, 1, 1), (4, 4, 8, 8, 24))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only adds contention on a shared 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def faces():
    return synthetic_identities(6, 4, seed=3)


@pytest.fixture(scope="module")
def stage0(faces):
    model, classifier, _ = train_recognition(
        MICRO, faces.images, faces.labels, epochs=3, batch_size=8, lr=0.1, seed=0, progress=False
    )
    return model, classifier


@pytest.fixture(scope="module")
def cache(stage0, faces):
    return CellFeatureCache(stage0[0], faces, seed=0)


def _write_crops(folder, count, seed):
    folder.mkdir(parents=True, exist_ok=True)
    images = synthetic_identities(1, count, seed).images
    paths = []
    for k, image in enumerate(images):
        path = folder / f"img_{k}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# --- data ------------------------------------------------------------------------------------


def test_pair_list_reads_pairs_relative_to_its_folder(tmp_path):
    clean = _write_crops(tmp_path / "clean", 2, seed=1)
    occluded = _write_crops(tmp_path / "occluded", 2, seed=2)
    listing = tmp_path / "pairs.txt"
    listing.write_text(f"clean/{clean[0].name}\toccluded/{occluded[0].name}\t3\n\n{clean[1]}\t{occluded[1]}\t0\n")
    pairs = read_pair_list(listing)
    assert pairs.clean.shape == pairs.occluded.shape == (2, 112, 96, 3)
    assert pairs.labels.tolist() == [3, 0]
    np.testing.assert_array_equal(pairs.clean[0], np.asarray(Image.open(clean[0])))
    np.testing.assert_array_equal(pairs.occluded[1], np.asarray(Image.open(occluded[1])))


@pytest.mark.parametrize(
    "second_line, error, pattern",
    [
        ("a.png\tmissing.png\t1", FileNotFoundError, r"pairs.txt:2: occluded image .*missing.png.* does not exist"),
        ("a.png\ta.png\tseven", ValueError, r"pairs.txt:2: label 'seven' is not a class id; expected an integer >= 0"),
        ("a.png\ta.png\t-1", ValueError, r"pairs.txt:2: label '-1'"),
        ("a.png\ta.png", ValueError, r"pairs.txt:2: 2 field\(s\).*expected 3: clean<TAB>occluded<TAB>label"),
    ],
)
def test_pair_list_errors_name_the_line(tmp_path, second_line, error, pattern):
    Image.fromarray(synthetic_identities(1, 1, 0).images[0]).save(tmp_path / "a.png")
    listing = tmp_path / "pairs.txt"
    listing.write_text(f"a.png\ta.png\t0\n{second_line}\n")
    with pytest.raises(error, match=pattern):
        read_pair_list(listing)


def test_identity_folders_are_read_in_name_order(tmp_path):
    _write_crops(tmp_path / "bob", 2, seed=1)
    _write_crops(tmp_path / "alice", 3, seed=2)
    faces = read_identity_folders(tmp_path)
    assert faces.names == ("alice", "bob")
    assert faces.labels.tolist() == [0, 0, 0, 1, 1]
    assert faces.images.shape == (5, 112, 96, 3)


def test_identity_folder_with_one_image_is_refused(tmp_path):
    _write_crops(tmp_path / "alice", 2, seed=1)
    _write_crops(tmp_path / "bob", 1, seed=2)
    with pytest.raises(
        ValueError,
        match=r"identity folder .*bob has 1 image\(s\) \(img_0.png\); every "
        r"identity needs at least 2 images.*add images or remove the folder",
    ):
        read_identity_folders(tmp_path)


def test_identity_folder_images_must_be_aligned_crops(tmp_path):
    folder = tmp_path / "alice"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.zeros((120, 100, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    with pytest.raises(ValueError, match=r"is 100x120 \(WxH\); expected an aligned 96x112 or 150x150 crop"):
        read_identity_folders(tmp_path)


def test_identity_folders_hold_one_crop_size(tmp_path):
    for name, shape in (("alice", (112, 96, 3)), ("bob", (150, 150, 3))):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(tmp_path / name / f"{k}.png")
    with pytest.raises(ValueError, match="mixes crop sizes 96x112, 150x150"):
        read_identity_folders(tmp_path)


def test_occlude_cell_changes_only_that_cell_and_is_seeded(faces):
    pairs, rows = occlude_cell(faces, 12, seed=5, count=30)
    assert len(pairs.clean) == 30 and len(faces.images) == 24
    assert np.bincount(rows, minlength=24).min() >= 1, "every face is used before any is used twice"
    np.testing.assert_array_equal(pairs.clean, faces.images[rows])
    np.testing.assert_array_equal(pairs.labels, faces.labels[rows])
    changed = (pairs.clean != pairs.occluded).any(axis=-1)
    ys, xs = np.nonzero(changed.any(axis=0))
    assert ys.min() >= 44 - 2 and ys.max() < 67 + 2 and xs.min() >= 38 - 2 and xs.max() < 57 + 2
    again, again_rows = occlude_cell(faces, 12, seed=5, count=30)
    np.testing.assert_array_equal(again.occluded, pairs.occluded)
    np.testing.assert_array_equal(again_rows, rows)
    _, subset_rows = occlude_cell(faces, 3, seed=5, count=10)
    assert len(set(subset_rows.tolist())) == 10
    _, everyone_rows = occlude_cell(faces, 3, seed=5)
    assert everyone_rows.tolist() == list(range(24))
    with pytest.raises(ValueError, match="count"):
        occlude_cell(faces, 3, seed=5, count=0)


# --- stage 1 -------------------------------------------------------------------------------------


def test_stage1_trains_only_the_mask_generator_and_its_loss_falls(stage0, cache):
    model, classifier = stage0
    result = train_pdsn(model, classifier, cache.cell(12), 12, Stage1Config(epochs=5, batch_size=8, lr=0.05))
    losses = [h.loss for h in result.history]
    assert losses[-1] < 0.9 * losses[0], f"stage-1 loss did not fall: {losses}"
    assert all(0.0 < h.mask_mean < 1.0 for h in result.history)
    reference = model.state_dict()
    for key, value in result.pdsn.state_dict().items():
        if not key.startswith("sia."):
            assert torch.equal(value, reference[key]), f"frozen tensor {key} changed"
    assert not result.pdsn.training
    fresh = train_pdsn(model, classifier, cache.cell(12), 12, Stage1Config(epochs=1, batch_size=8, lr=0.0001))
    assert not torch.allclose(result.pdsn.sia[0].weight, fresh.pdsn.sia[0].weight)


def test_stage1_checkpoint_is_reference_format_and_round_trips(stage0, cache, tmp_path):
    model, classifier = stage0
    result = train_pdsn(model, classifier, cache.cell(3), 3, Stage1Config(epochs=2, batch_size=8))
    path = tmp_path / checkpoint_name(3)
    save_pdsn(path, result)
    assert path.name == "cell_03.pth"
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"epoch", "optim_state_dict", "model_state_dict"} and raw["epoch"] == 2
    keys = set(raw["model_state_dict"])
    assert {"sia.0.weight", "sia.1.weight", "sia.2.running_mean", "conv1.weight", "fc.2.weight"} <= keys
    assert raw["optim_state_dict"]["state"], "the optimiser's momentum buffers are saved"
    loaded, info = load_pdsn_model(path)
    assert info.epoch == 2 and loaded.architecture.widths == MICRO.widths
    features = cache.cell(3)
    with torch.no_grad():
        expected = result.pdsn.sia(torch.abs(features.clean - features.occluded))
        got = loaded.sia(torch.abs(features.clean - features.occluded))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    _, info = load_recognition_model(path)
    assert len(info.ignored_keys) == len([k for k in keys if k.startswith("sia.")])


def test_stage1_refuses_a_cell_out_of_range_and_foreign_labels(stage0, cache):
    model, classifier = stage0
    with pytest.raises(ValueError, match=r"cell is 25, expected a cell id in 0..24"):
        train_pdsn(model, classifier, cache.cell(0), 25)
    features = cache.cell(0)
    foreign = PairFeatures(features.clean, features.occluded, features.labels + 100)
    with pytest.raises(ValueError, match=r"classifier has 6 classes.*same data, identities and seed"):
        train_pdsn(model, classifier, foreign, 0)


def test_classifier_of_another_width_is_refused(stage0, tmp_path):
    model, classifier = stage0
    _, classifier_path = save_stage0(tmp_path, model, classifier)
    assert load_classifier(classifier_path, 512).weight.shape == (6, 512)
    with pytest.raises(CheckpointError, match=r"scores 512-d embeddings, but the model produces 256-d"):
        load_classifier(classifier_path, 256)


def test_find_pdsn_checkpoints_names_the_missing_cells(tmp_path):
    for cell in range(NUM_CELLS):
        if cell not in (4, 17):
            (tmp_path / checkpoint_name(cell)).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"lacks the stage-1 checkpoints of cells \[4, 17\].*--cell 4"):
        find_pdsn_checkpoints(tmp_path)


# --- dictionary ----------------------------------------------------------------------------------


def test_mean_mask_averages_min_max_normalised_masks():
    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sia = torch.nn.Identity()

    shape = (2, 3, 2)
    ramp = torch.arange(12, dtype=torch.float32).reshape(shape)
    clean = torch.stack([ramp * 3.0 + 7.0, torch.full(shape, 5.0)])
    occluded = torch.stack([torch.full(shape, 7.0), torch.full(shape, 2.0)])
    result = mean_mask(Identity(), PairFeatures(clean, occluded, torch.zeros(2, dtype=torch.int64)))
    # pair 0: |diff| = 3 * ramp -> normalised ramp / 11; pair 1: constant -> all ones (keep all).
    np.testing.assert_allclose(result, ((ramp / 11.0 + 1.0) / 2.0).numpy(), rtol=1e-6)


def test_write_dictionary_writes_reference_mean_masks_and_the_binary_dictionary(tmp_path):
    shape = (4, 7, 6)
    rng = np.random.default_rng(0)
    mean_masks = rng.random((NUM_CELLS, *shape)).astype(np.float32)
    files = write_dictionary(tmp_path, mean_masks, tau=0.25, source="test")
    assert files.mean_masks[7] == tmp_path / "mean_masks" / "cell_07" / "mean_mask.txt"
    lines = files.mean_masks[7].read_text().splitlines()
    assert len(lines) == 4 * 7 * 6
    c, h, w = 2, 5, 3
    assert float(lines[c * 42 + h * 6 + w]) == pytest.approx(mean_masks[7, c, h, w], rel=1e-7)
    assert all(0.0 <= float(line) <= 1.0 for line in lines)
    np.testing.assert_array_equal(read_mean_mask_txt(files.mean_masks[7], shape), mean_masks[7])
    loaded, _ = load_mean_masks(tmp_path / "mean_masks", shape)
    np.testing.assert_array_equal(loaded, mean_masks)
    dictionary = load_dictionary(files.dictionary, shape)
    assert dictionary.tau == 0.25 and "test" in dictionary.source
    discarded = 1.0 - dictionary.masks.reshape(NUM_CELLS, -1).mean(axis=1)
    np.testing.assert_allclose(discarded, 0.25, atol=1 / 168)
    smallest = np.unravel_index(np.argmin(mean_masks[7]), shape)
    assert dictionary.masks[7][smallest] == 0.0


def test_extraction_refuses_a_pdsn_of_another_width(stage0, cache, tmp_path):
    model, _ = stage0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        wide = PDSNNetwork(OTHER_WIDTH).eval()
    paths = []
    for cell in range(NUM_CELLS):
        pdsn = wide if cell == 3 else PDSNNetwork(MICRO)
        if cell != 3:
            pdsn.load_state_dict({**pdsn.state_dict(), **model.state_dict()})
        paths.append(tmp_path / checkpoint_name(cell))
        torch.save({"epoch": 1, "optim_state_dict": {}, "model_state_dict": pdsn.state_dict()}, paths[-1])
    with pytest.raises(
        CheckpointError,
        match=r"cell_03.pth is a network of layers \[1, 1, 1, 1\], widths "
        r"\[4, 4, 8, 8, 24\].*widths \[4, 4, 8, 8, 16\]",
    ):
        extract_mean_masks(paths, cache, release=False)


# --- stage 2 -------------------------------------------------------------------------------------


def test_stage2_fine_tunes_copies_and_refuses_a_dictionary_of_another_width(stage0, faces):
    model, classifier = stage0
    rng = np.random.default_rng(1)
    dictionary = MaskDictionary((rng.random((NUM_CELLS, 16, 7, 6)) > 0.25).astype(np.float32), 0.25, None, "t")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, tuned_classifier, history = finetune(
        model, classifier, dictionary, faces, Stage2Config(epochs=2, batch_size=8, lr=0.01)
    )
    assert len(history) == 2 and all(np.isfinite(h.loss) for h in history)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "the input model must not be modified"
    assert not torch.equal(tuned.fc[2].weight, model.fc[2].weight)
    assert not torch.equal(tuned.conv1.weight, model.conv1.weight)
    assert not tuned.training and not tuned_classifier.training
    wrong = MaskDictionary(np.ones((NUM_CELLS, 32, 7, 6), dtype=np.float32), 0.25, None, "t")
    with pytest.raises(
        ValueError,
        match=r"feature maps of shape \(32, 7, 6\), but the model's trunk outputs "
        r"\(16, 7, 6\)",
    ):
        finetune(model, classifier, wrong, faces)


# --- the CLI, end to end -------------------------------------------------------------------------


def test_cli_runs_the_pipeline_on_synthetic_faces(tmp_path, capsys):
    data = ["--identities", "4", "--images-per-identity", "3", "--threads", "1"]
    s0, s1, dictionary, s2 = (tmp_path / name for name in ("s0", "s1", "dict", "s2"))
    assert main(["train-stage0", *data, "--epochs", "1", "--out", str(s0)]) == 0
    checkpoint = ["--checkpoint", str(s0 / "model.pth")]
    assert (
        main(
            [
                "train-pdsn",
                *checkpoint,
                "--cells",
                "all",
                *data,
                "--pairs-per-cell",
                "12",
                "--epochs",
                "2",
                "--out",
                str(s1),
            ]
        )
        == 0
    )
    assert len(find_pdsn_checkpoints(s1)) == NUM_CELLS
    assert (
        main(
            [
                "build-dictionary",
                "--pdsn-dir",
                str(s1),
                *data,
                "--pairs-per-cell",
                "12",
                "--tau",
                "0.3",
                "--out",
                str(dictionary),
            ]
        )
        == 0
    )
    lines = (dictionary / "mean_masks" / "cell_24" / "mean_mask.txt").read_text().splitlines()
    assert len(lines) == 64 * 7 * 6
    assert load_dictionary(dictionary / "dictionary.npz", (64, 7, 6)).tau == 0.3
    assert (
        main(
            [
                "finetune",
                *checkpoint,
                "--dictionary",
                str(dictionary / "dictionary.npz"),
                *data,
                "--epochs",
                "1",
                "--out",
                str(s2),
            ]
        )
        == 0
    )
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(s2 / "model.pth"),
                "--dictionary",
                str(dictionary / "mean_masks"),
                *lfw_arguments(tmp_path / "lfw", report),
                "--markdown",
                str(tmp_path / "eval.md"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| pytorch fp32 | occluded | on |" in printed and "| pytorch fp32 | occluded | off |" in printed
    assert report.is_file() and (tmp_path / "eval.md").read_text().count("| pytorch fp32 |") == 3
    model, _ = load_recognition_model(s2 / "model.pth")
    x = normalize_faces(synthetic_identities(1, 2, 0).images)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-pdsn", "--cell", "25"], r"--cell is 25, expected a cell id in 0..24"),
        (["train-pdsn", "--cells", "3,x"], r"--cells '3,x': expected 'all' or comma-separated cell ids 0..24"),
        (["evaluate"], "nothing to evaluate: pass --checkpoint"),
        (["evaluate", "--checkpoint", "x.pth", "--pairs", "p.txt"], "--pairs and --root go together"),
        (["evaluate", "--checkpoint", "x.pth", "--far", "0.1,2"], r"every false accept rate must be in \(0, 1\)"),
    ],
)
def test_cli_bad_arguments_exit_2_with_the_reason(argv, message, tmp_path, capsys):
    if argv[0] == "train-pdsn":
        argv = [*argv, "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_train_pdsn_refuses_a_checkpoint_of_another_architecture(stage0, tmp_path, capsys):
    model, classifier = stage0
    save_stage0(tmp_path, model, classifier)
    argv = [
        "train-pdsn",
        "--checkpoint",
        str(tmp_path / "model.pth"),
        "--architecture",
        "lresnet-ir-tiny",
        "--cell",
        "0",
        "--out",
        str(tmp_path / "s1"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "does not fit lresnet-ir-tiny" in err
        and "wrong shape: conv1.weight is [4, 3, 3, 3], expected [8, 3, 3, 3]" in err
    )


def test_train_cells_writes_one_checkpoint_per_cell(stage0, cache, tmp_path):
    model, classifier = stage0
    histories = train_cells(
        model, classifier, cache, [0, 24], tmp_path, Stage1Config(epochs=1, batch_size=8), release=False
    )
    assert sorted(histories) == [0, 24]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell_00.pth", "cell_24.pth"]


# --- the demo model --------------------------------------------------------------------------------


def test_train_demo_writes_a_deployable_folder(tmp_path):
    config = DemoConfig(
        architecture=MICRO,
        identities=4,
        images_per_identity=3,
        stage0_epochs=1,
        pairs_per_cell=6,
        stage1=Stage1Config(epochs=1, batch_size=8),
        stage2=Stage2Config(epochs=1, batch_size=8),
        eval_pairs=20,
        eval_identities=6,
        eval_images_per_identity=2,
    )
    threads = torch.get_num_threads()
    result = train_demo(tmp_path / "demo", config, progress=False)
    assert torch.get_num_threads() == threads
    out = tmp_path / "demo"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "model.pth",
        "classifier.pth",
        "dictionary.npz",
        "evaluation.json",
        "evaluation.md",
        "pipeline.json",
    } <= names
    assert sum(name.endswith("/mean_mask.txt") for name in names) == NUM_CELLS
    assert not any(name.startswith(("stage1/", "cell_")) for name in names), "stage-1 checkpoints stay in work"
    model, info = load_recognition_model(out / "model.pth")
    assert model.architecture.widths == MICRO.widths and info.epoch == 1
    dictionary = load_dictionary(out / "dictionary.npz", MICRO.feature_shape)
    mean_masks, _ = load_mean_masks(out / "mean_masks", MICRO.feature_shape)
    np.testing.assert_array_equal(dictionary.masks, binarize_by_tau(mean_masks, config.tau))
    rows = result.report["rows"]
    assert [(r["protocol"], r["fdm"]) for r in rows] == [("clean", None), ("occluded", False), ("occluded", True)] * 2
    assert set(result.seconds) == {"stage 0", "stage 1", "dictionary", "stage 2", "evaluation"}
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert pipeline["config"]["stage1"]["seed"] == config.seed and pipeline["machine"]["threads"] == 1
    assert "The method's claim is that FDM helps on occluded pairs" in (out / "evaluation.md").read_text()
    with pytest.raises(FileExistsError, match="not an empty folder"):
        train_demo(out, config, progress=False)


def test_cli_trains_a_pdsn_from_a_reference_pair_list(stage0, faces, tmp_path, capsys):
    model, classifier = stage0
    save_stage0(tmp_path / "s0", model, classifier)
    pairs, _ = occlude_cell(faces, 12, seed=0)
    lines = []
    for k, (clean, occluded, label) in enumerate(zip(pairs.clean, pairs.occluded, pairs.labels)):
        Image.fromarray(clean).save(tmp_path / f"clean_{k}.png")
        Image.fromarray(occluded).save(tmp_path / f"occluded_{k}.png")
        lines.append(f"clean_{k}.png\toccluded_{k}.png\t{label}")
    (tmp_path / "cell12.txt").write_text("\n".join(lines) + "\n")
    argv = [
        "train-pdsn",
        "--checkpoint",
        str(tmp_path / "s0" / "model.pth"),
        "--data",
        str(tmp_path / "cell12.txt"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "s1"),
    ]
    assert main([*argv, "--cell", "12"]) == 0
    assert "cell 12:" in capsys.readouterr().out
    pdsn, info = load_pdsn_model(tmp_path / "s1" / "cell_12.pth")
    assert info.epoch == 1 and pdsn.architecture.widths == MICRO.widths
    assert main([*argv, "--cells", "all"]) == 2
    assert "a pair list holds the occluded images of one cell, but 25 cells were asked for" in capsys.readouterr().err
