"""The committed demo model (`pdsn train-demo --out model/default_model`) is complete and consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pdsn.model.checkpoint import load_recognition_model
from pdsn.model.demo_weights import TRAINED_DEMO_CHECKPOINT, TRAINED_DEMO_DICTIONARY, TRAINED_DEMO_DIR
from pdsn.model.dictionary import binarize_by_tau, load_dictionary, load_mean_masks
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, NUM_CELLS, cell_bounds
from pdsn.model.network import LRESNET_IR_TINY


def test_checkpoint_dictionary_and_mean_masks_belong_together():
    model, info = load_recognition_model(TRAINED_DEMO_CHECKPOINT)
    assert model.architecture == LRESNET_IR_TINY and info.layout == "nested:model_state_dict"
    shape = model.architecture.feature_shape
    dictionary = load_dictionary(TRAINED_DEMO_DICTIONARY, shape)
    assert dictionary.tau == 0.25
    mean_masks, files = load_mean_masks(TRAINED_DEMO_DIR / "mean_masks", shape)
    assert len(files) == NUM_CELLS and files[7].endswith("cell_07/mean_mask.txt")
    assert len(Path(files[7]).read_text().splitlines()) == int(np.prod(shape))
    np.testing.assert_array_equal(dictionary.masks, binarize_by_tau(mean_masks, 0.25))


def test_each_learned_mask_discards_features_where_its_cell_is():
    masks = load_dictionary(TRAINED_DEMO_DICTIONARY, LRESNET_IR_TINY.feature_shape).masks
    _, height, width = LRESNET_IR_TINY.feature_shape
    for cell in range(NUM_CELLS):
        discarded = 1.0 - masks[cell].mean(axis=0)
        row, col = np.unravel_index(np.argmax(discarded), discarded.shape)
        x0, y0, x1, y1 = cell_bounds(cell)
        # The cell's footprint on the feature map, grown by one position for receptive fields.
        rows = range(int(y0 * height / CROP_HEIGHT) - 1, int(np.ceil(y1 * height / CROP_HEIGHT)) + 1)
        cols = range(int(x0 * width / CROP_WIDTH) - 1, int(np.ceil(x1 * width / CROP_WIDTH)) + 1)
        assert row in rows and col in cols, f"cell {cell}: most discarded position {(row, col)}"


def test_the_evaluation_report_shows_fdm_helping_on_occluded_pairs():
    report = json.loads((TRAINED_DEMO_DIR / "evaluation.json").read_text())
    assert report["pairs"]["count"] == 600 and report["pairs"]["same"] == 300
    rows = {(row["model"].split(" ")[1], row["protocol"], row["fdm"]): row for row in report["rows"]}
    for stage in ("0", "2"):
        with_fdm, without = rows[(stage, "occluded", True)], rows[(stage, "occluded", False)]
        assert with_fdm["accuracy"] > without["accuracy"]
        assert rows[(stage, "clean", None)]["accuracy"] > without["accuracy"]
    assert "SYNTHETIC" in (TRAINED_DEMO_DIR / "evaluation.md").read_text()
