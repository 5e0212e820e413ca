import json
from pathlib import Path

import numpy as np
import pytest

from pdsn.model.dictionary import (
    MaskDictionary,
    binarize_by_tau,
    binarize_by_threshold,
    build_dictionary,
    load_dictionary,
    load_dictionary_array,
    load_mean_masks,
    read_mean_mask_txt,
    save_dictionary,
    synthetic_mean_masks,
    validate_dictionary,
    write_mean_mask_txt,
)
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, NUM_CELLS, cell_bounds, cells_to_vector

SMALL = (8, 7, 6)
SMALL_SIZE = 8 * 7 * 6


def random_mean_masks(seed: int = 0, shape: tuple[int, int, int] = SMALL) -> np.ndarray:
    return np.random.default_rng(seed).random((NUM_CELLS, *shape)).astype(np.float32)


def random_binary(seed: int = 0, shape: tuple[int, int, int] = SMALL) -> np.ndarray:
    return (np.random.default_rng(seed).random((NUM_CELLS, *shape)) > 0.3).astype(np.float32)


def write_cells(directory: Path, masks: np.ndarray, name: str) -> list[Path]:
    """Write one mean_mask.txt per cell; ``name`` may use {cell} (0-based) and {paper} (1-based)."""
    paths = []
    for cell, mask in enumerate(masks):
        path = directory / name.format(cell=cell, paper=cell + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mean_mask_txt(path, mask)
        paths.append(path)
    return paths


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- mean_mask.txt -----------------------------------------------------------------------------


def test_txt_round_trip_and_reference_layout(tmp_path: Path) -> None:
    mask = random_mean_masks()[0]
    path = tmp_path / "mean_mask.txt"
    write_mean_mask_txt(path, mask)
    lines = path.read_text().splitlines()
    assert len(lines) == SMALL_SIZE
    c, h, w = 5, 3, 4
    assert float(lines[c * 42 + h * 6 + w]) == pytest.approx(mask[c, h, w])
    loaded = read_mean_mask_txt(path, SMALL)
    assert loaded.dtype == np.float32 and loaded.shape == SMALL
    np.testing.assert_array_equal(loaded, mask)


def test_txt_tolerates_whitespace_and_trailing_blank_lines(tmp_path: Path) -> None:
    values = np.linspace(0, 1, SMALL_SIZE)
    path = tmp_path / "m.txt"
    path.write_text("".join(f"  {v:.6f}\t\r\n" for v in values) + "\n   \n")
    np.testing.assert_allclose(read_mean_mask_txt(path, SMALL).reshape(-1), values, atol=1e-6)


def test_txt_default_shape(tmp_path: Path) -> None:
    mask = np.random.default_rng(3).random((512, 7, 6)).astype(np.float32)
    path = tmp_path / "mean_mask.txt"
    write_mean_mask_txt(path, mask)
    np.testing.assert_array_equal(read_mean_mask_txt(path), mask)
    lines = path.read_text().splitlines()
    write_lines(path, lines[:-1])
    with pytest.raises(ValueError, match="has 21503 values, expected 21504 = 512x7x6"):
        read_mean_mask_txt(path)


def test_txt_errors(tmp_path: Path) -> None:
    good = [f"{v:.4f}" for v in np.linspace(0, 1, SMALL_SIZE)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mean_mask_txt(tmp_path / "missing.txt", SMALL)
    with pytest.raises(ValueError, match="has 335 values, expected 336 = 8x7x6"):
        read_mean_mask_txt(write_lines(tmp_path / "short.txt", good[:-1]), SMALL)
    with pytest.raises(ValueError, match=r"line 8: '0\.5,' is not a number"):
        read_mean_mask_txt(write_lines(tmp_path / "c.txt", [*good[:7], "0.5,", *good[8:]]), SMALL)
    with pytest.raises(ValueError, match="line 3: '' is not a number"):
        read_mean_mask_txt(write_lines(tmp_path / "gap.txt", good[:2] + [""] + good[2:]), SMALL)
    with pytest.raises(ValueError, match=r"1 NaN/Inf value\(s\), the first at line 11"):
        read_mean_mask_txt(write_lines(tmp_path / "n.txt", [*good[:10], "nan", *good[11:]]), SMALL)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: min -0\.2, max 1\.5"):
        read_mean_mask_txt(write_lines(tmp_path / "range.txt", ["-0.2", "1.5"] + good[2:]), SMALL)
    with pytest.raises(ValueError, match="not a text file"):
        (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
        read_mean_mask_txt(tmp_path / "binary.txt", SMALL)
    with pytest.raises(ValueError, match="feature_shape must be three positive integers"):
        read_mean_mask_txt(tmp_path / "short.txt", (8, 42))


def test_write_rejects_bad_masks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(C, H, W\).*got shape \(25, 8, 7, 6\)"):
        write_mean_mask_txt(tmp_path / "m.txt", random_mean_masks())
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        write_mean_mask_txt(tmp_path / "m.txt", np.full(SMALL, 2.0))


# --- loading the 25 files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["cell_{cell}/mean_mask.txt", "mean_mask_{paper:02d}.txt", "run3/cell{paper}/mean_mask.txt"],
)
def test_load_mean_masks_from_directory(tmp_path: Path, name: str) -> None:
    masks = random_mean_masks()
    paths = write_cells(tmp_path, masks, name)
    (tmp_path / "README.txt").write_text("ignored: no number in the name\n")
    loaded, files = load_mean_masks(tmp_path, SMALL)
    assert loaded.shape == (NUM_CELLS, *SMALL) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, masks)
    assert files == [str(path) for path in paths]


def test_load_mean_masks_from_list(tmp_path: Path) -> None:
    masks = random_mean_masks(1)
    paths = write_cells(tmp_path, masks, "any_name_{cell}.txt")
    shuffled = list(reversed(paths))
    loaded, files = load_mean_masks(shuffled, SMALL)
    np.testing.assert_array_equal(loaded, masks[::-1])
    assert files == [str(path) for path in shuffled]
    with pytest.raises(ValueError, match="must list 25 mean_mask.txt paths.*got 24"):
        load_mean_masks(paths[:24], SMALL)
    with pytest.raises(FileNotFoundError):
        load_mean_masks(paths[:24] + [tmp_path / "nope.txt"], SMALL)
    with pytest.raises(TypeError, match="directory or a sequence of 25 paths"):
        load_mean_masks(25, SMALL)


def test_load_mean_masks_directory_errors(tmp_path: Path) -> None:
    masks = random_mean_masks()
    write_cells(tmp_path / "short", masks[:24], "cell_{cell}/mean_mask.txt")
    with pytest.raises(ValueError, match=r"exactly 25 .*found 24 numbered file\(s\): 0: cell_0/"):
        load_mean_masks(tmp_path / "short", SMALL)
    write_cells(tmp_path / "shifted", masks, "mask_{cell}.txt")
    (tmp_path / "shifted" / "mask_0.txt").rename(tmp_path / "shifted" / "mask_26.txt")
    with pytest.raises(ValueError, match="24: mask_24.txt; 26: mask_26.txt"):
        load_mean_masks(tmp_path / "shifted", SMALL)
    write_cells(tmp_path / "twice", masks, "mask_{cell}.txt")
    write_mean_mask_txt(tmp_path / "twice" / "extra_3.txt", masks[3])
    with pytest.raises(ValueError, match="3: extra_3.txt, mask_3.txt"):
        load_mean_masks(tmp_path / "twice", SMALL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mean_masks(tmp_path / "absent", SMALL)
    with pytest.raises(ValueError, match="is a file, expected a directory"):
        load_mean_masks(tmp_path / "twice" / "mask_3.txt", SMALL)


def test_load_mean_masks_reports_bad_file(tmp_path: Path) -> None:
    masks = random_mean_masks()
    paths = write_cells(tmp_path, masks, "cell_{cell}/mean_mask.txt")
    write_lines(paths[7], ["0.5"] * 10)
    with pytest.raises(ValueError, match=r"cell_7.mean_mask\.txt has 10 values, expected 336"):
        load_mean_masks(tmp_path, SMALL)


# --- binarisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_binarize_by_tau_discards_exactly_round_tau_n(tau: float) -> None:
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 4, (NUM_CELLS, *SMALL)) / 3.0  # four levels: many ties
    masks[5] = 0.5  # one item entirely tied
    binary = binarize_by_tau(masks, tau)
    assert binary.dtype == np.float32 and binary.shape == masks.shape
    assert set(np.unique(binary)) <= {0.0, 1.0}
    zeros = (binary == 0).reshape(NUM_CELLS, -1).sum(axis=1)
    np.testing.assert_array_equal(zeros, round(tau * SMALL_SIZE))
    flat_masks, flat_binary = masks.reshape(NUM_CELLS, -1), binary.reshape(NUM_CELLS, -1)
    for item, kept in zip(flat_masks, flat_binary):
        if 0 < kept.sum() < kept.size:
            assert item[kept == 0].max() <= item[kept == 1].min()
    # Ties go in C, H, W order: the tied item discards its first elements.
    discarded = np.flatnonzero(flat_binary[5] == 0)
    np.testing.assert_array_equal(discarded, np.arange(round(tau * SMALL_SIZE)))


def test_binarize_by_tau_is_deterministic_and_default_is_quarter() -> None:
    masks = random_mean_masks(4)
    binary = binarize_by_tau(masks)
    np.testing.assert_array_equal(binary, binarize_by_tau(masks.copy(), 0.25))
    assert (binary == 0).sum() == NUM_CELLS * 84


@pytest.mark.parametrize(
    ("tau", "error"),
    [
        (1.0, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        ("0.25", TypeError),
        (True, TypeError),
    ],
)
def test_binarize_by_tau_rejects_bad_tau(tau: object, error: type) -> None:
    with pytest.raises(error, match=r"tau must be a number in \[0, 1\)"):
        binarize_by_tau(random_mean_masks(), tau)


def test_binarize_by_threshold() -> None:
    masks = random_mean_masks(5)
    masks[0, 0, 0, 0] = 0.4
    binary = binarize_by_threshold(masks, 0.4)
    np.testing.assert_array_equal(binary, (masks >= 0.4).astype(np.float32))
    assert binary[0, 0, 0, 0] == 1.0
    assert binarize_by_threshold(masks, 0.0).all()
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        binarize_by_threshold(masks, 1.5)


def test_binarize_rejects_bad_mean_masks() -> None:
    with pytest.raises(ValueError, match=r"mean_masks must have shape .*got shape \(24, 8, 7, 6\)"):
        binarize_by_tau(random_mean_masks()[:24])
    with pytest.raises(ValueError, match=r"mean_masks has values outside \[0, 1\]"):
        binarize_by_threshold(random_mean_masks() * 3, 0.5)


# --- validation and the MaskDictionary ---------------------------------------------------------


def test_validate_dictionary() -> None:
    binary = random_binary()
    checked = validate_dictionary(binary.astype(np.uint8))
    assert checked.dtype == np.float32
    np.testing.assert_array_equal(checked, binary)
    mean = random_mean_masks()
    message = rf"{mean.size} of {mean.size} values are neither 0 nor 1.*binarize_by_tau"
    with pytest.raises(ValueError, match=message):
        validate_dictionary(mean)
    np.testing.assert_array_equal(validate_dictionary(mean, binary=False), mean)
    with pytest.raises(ValueError, match=r"dictionary must have shape .*got shape \(25, 336\)"):
        validate_dictionary(binary.reshape(NUM_CELLS, -1))
    with pytest.raises(ValueError, match=r"masks must have shape.*\(26, 8, 7, 6\)"):
        validate_dictionary(np.ones((26, *SMALL)), argument="masks")
    nan = binary.copy()
    nan[3, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf value"):
        validate_dictionary(nan)
    with pytest.raises(TypeError, match="dtype"):
        validate_dictionary(np.full((NUM_CELLS, *SMALL), "1"))


def make_dictionary(seed: int = 0) -> MaskDictionary:
    masks = binarize_by_tau(random_mean_masks(seed))
    return MaskDictionary(masks=masks, tau=0.25, threshold=None, source="test")


def test_mask_dictionary_basics() -> None:
    source = random_binary()
    dictionary = MaskDictionary(masks=source, tau=None, threshold=None, source="unit test")
    assert dictionary.feature_shape == SMALL and dictionary.num_cells == NUM_CELLS
    assert dictionary.masks.dtype == np.float32
    source[:] = 0
    assert dictionary.masks.any(), "the dictionary keeps its own copy"
    with pytest.raises(ValueError):
        dictionary.masks[0, 0, 0, 0] = 0.0
    with pytest.raises(AttributeError):
        dictionary.tau = 0.5


def test_mask_dictionary_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="binarize_by_tau"):
        MaskDictionary(masks=random_mean_masks(), tau=None, threshold=None, source="x")
    with pytest.raises(ValueError, match="not both"):
        MaskDictionary(masks=random_binary(), tau=0.25, threshold=0.5, source="x")
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 1\)"):
        MaskDictionary(masks=random_binary(), tau=1.0, threshold=None, source="x")
    with pytest.raises(TypeError, match="source must be a str"):
        MaskDictionary(masks=random_binary(), tau=None, threshold=None, source=None)


def test_combine_is_the_and_of_occluded_items() -> None:
    dictionary = make_dictionary()
    masks = dictionary.masks
    combined = dictionary.combine(cells_to_vector([3, 11, 12]))
    assert combined.shape == SMALL and combined.dtype == np.float32
    np.testing.assert_array_equal(combined, masks[3] * masks[11] * masks[12])
    np.testing.assert_array_equal(dictionary.combine(np.zeros(NUM_CELLS)), np.ones(SMALL))
    all_cells = dictionary.combine(np.ones(NUM_CELLS, dtype=bool))
    np.testing.assert_array_equal(all_cells, np.prod(masks, axis=0))
    np.testing.assert_array_equal(dictionary.combine(cells_to_vector([7])), masks[7])
    batch = np.stack([cells_to_vector([]), cells_to_vector([0, 24]), np.ones(NUM_CELLS)])
    combined = dictionary.combine(batch)
    assert combined.shape == (3, *SMALL)
    np.testing.assert_array_equal(combined[1], masks[0] * masks[24])
    np.testing.assert_array_equal(combined[2], np.prod(masks, axis=0))
    with pytest.raises(ValueError, match="occlusion vector must have 25 entries"):
        dictionary.combine(np.zeros(24))


def test_provenance() -> None:
    binary = random_binary()
    binary[0] = 1.0
    binary[1] = 0.0
    dictionary = MaskDictionary(masks=binary, tau=None, threshold=0.5, source="unit test")
    provenance = dictionary.provenance()
    assert provenance["tau"] is None and provenance["threshold"] == 0.5
    assert provenance["source"] == "unit test"
    assert provenance["feature_shape"] == [8, 7, 6]
    assert provenance["keep_fraction"]["min"] == 0.0 and provenance["keep_fraction"]["max"] == 1.0
    assert provenance["keep_fraction"]["mean"] == pytest.approx(binary.mean())
    json.dumps(provenance)


# --- array files, save/load --------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    dictionary = make_dictionary(1)
    path = tmp_path / "dictionary.npz"
    save_dictionary(path, dictionary)
    loaded = load_dictionary(path)
    np.testing.assert_array_equal(loaded.masks, dictionary.masks)
    assert loaded.provenance() == dictionary.provenance()
    assert load_dictionary(path, SMALL).tau == 0.25
    with pytest.raises(ValueError, match="do not match"):
        load_dictionary(path, (512, 7, 6))
    with pytest.raises(ValueError, match="must end in .npz"):
        save_dictionary(tmp_path / "dictionary.npy", dictionary)
    with pytest.raises(TypeError, match="must be a MaskDictionary"):
        save_dictionary(path, dictionary.masks)


def test_load_dictionary_from_plain_arrays(tmp_path: Path) -> None:
    binary = random_binary()
    np.save(tmp_path / "binary.npy", binary)
    loaded = load_dictionary(tmp_path / "binary.npy", SMALL)
    np.testing.assert_array_equal(loaded.masks, binary)
    assert loaded.tau is None and loaded.threshold is None
    assert loaded.source == str(tmp_path / "binary.npy")
    np.save(tmp_path / "mean.npy", random_mean_masks())
    with pytest.raises(ValueError, match="binarize_by_tau"):
        load_dictionary(tmp_path / "mean.npy", SMALL)
    with pytest.raises(FileNotFoundError):
        load_dictionary(tmp_path / "missing.npz")


def test_load_dictionary_array_reshapes_flat_default_shape(tmp_path: Path) -> None:
    flat = np.random.default_rng(0).random((NUM_CELLS, 21504)).astype(np.float32)
    np.save(tmp_path / "flat.npy", flat)
    loaded = load_dictionary_array(tmp_path / "flat.npy")
    assert loaded.shape == (NUM_CELLS, 512, 7, 6)
    np.testing.assert_array_equal(loaded[3, 100, 2, 5], flat[3, 100 * 42 + 2 * 6 + 5])


def test_load_dictionary_array_npz_selection(tmp_path: Path) -> None:
    masks = random_mean_masks()
    np.savez(tmp_path / "one.npz", whatever=masks)
    np.testing.assert_array_equal(load_dictionary_array(tmp_path / "one.npz", SMALL), masks)
    np.savez(tmp_path / "named.npz", dictionary=masks, other=np.zeros(3))
    np.testing.assert_array_equal(load_dictionary_array(tmp_path / "named.npz", SMALL), masks)
    np.savez(tmp_path / "two.npz", a=masks, b=masks)
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]; expected exactly one array"):
        load_dictionary_array(tmp_path / "two.npz", SMALL)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((24, 8, 7, 6), r"shape \(24, 8, 7, 6\), expected \(25, 8, 7, 6\) or \(25, 336\)"),
        ((25, 335), r"shape \(25, 335\)"),
        ((25, 8, 6, 7), r"shape \(25, 8, 6, 7\)"),
        ((8, 7, 6), r"shape \(8, 7, 6\)"),
    ],
)
def test_load_dictionary_array_rejects_wrong_shapes(tmp_path: Path, shape: tuple, message: str) -> None:
    np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        load_dictionary_array(tmp_path / "bad.npy", SMALL)


def test_load_dictionary_array_rejects_pickles_and_other_files(tmp_path: Path) -> None:
    objects = np.empty((NUM_CELLS,), dtype=object)
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        load_dictionary_array(tmp_path / "objects.npy", SMALL)
    (tmp_path / "masks.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"must be a \.npy or \.npz file, got suffix '\.pt'"):
        load_dictionary_array(tmp_path / "masks.pt", SMALL)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_dictionary_array(tmp_path / "broken.npz", SMALL)


# --- build_dictionary --------------------------------------------------------------------------


def test_build_dictionary_from_directory_and_list(tmp_path: Path) -> None:
    masks = random_mean_masks(6)
    paths = write_cells(tmp_path, masks, "cell_{paper}/mean_mask.txt")
    dictionary = build_dictionary(tmp_path, feature_shape=SMALL)
    np.testing.assert_array_equal(dictionary.masks, binarize_by_tau(masks, 0.25))
    assert dictionary.tau == 0.25 and dictionary.threshold is None
    assert str(paths[0]) in dictionary.source and str(paths[24]) in dictionary.source
    by_threshold = build_dictionary(paths, threshold=0.3, feature_shape=SMALL)
    np.testing.assert_array_equal(by_threshold.masks, binarize_by_threshold(masks, 0.3))
    assert by_threshold.tau is None and by_threshold.threshold == 0.3


def test_build_dictionary_default_shape_from_directory(tmp_path: Path) -> None:
    masks = synthetic_mean_masks(0)
    write_cells(tmp_path, masks, "mean_mask_{cell:02d}.txt")
    dictionary = build_dictionary(tmp_path, tau=0.25)
    assert dictionary.feature_shape == (512, 7, 6)
    np.testing.assert_array_equal((dictionary.masks == 0).reshape(NUM_CELLS, -1).sum(axis=1), 5376)


def test_build_dictionary_from_arrays(tmp_path: Path) -> None:
    masks = random_mean_masks(7)
    np.save(tmp_path / "mean.npy", masks.reshape(NUM_CELLS, -1))
    built = build_dictionary(tmp_path / "mean.npy", tau=0.1, feature_shape=SMALL)
    np.testing.assert_array_equal(built.masks, binarize_by_tau(masks, 0.1))
    assert built.tau == 0.1 and "mean.npy" in built.source
    binary = random_binary(7)
    np.savez(tmp_path / "binary.npz", masks=binary)
    kept = build_dictionary(tmp_path / "binary.npz", feature_shape=SMALL)
    np.testing.assert_array_equal(kept.masks, binary)
    with pytest.raises(ValueError, match="already binary"):
        build_dictionary(tmp_path / "binary.npz", tau=0.5, feature_shape=SMALL)
    assert kept.tau is None and kept.threshold is None and "binary.npz" in kept.source
    save_dictionary(tmp_path / "saved.npz", built)
    again = build_dictionary(tmp_path / "saved.npz", feature_shape=SMALL)
    assert again.provenance() == built.provenance()
    with pytest.raises(ValueError, match="threshold 0.3 was given, but the dictionary .* is already binary"):
        build_dictionary(tmp_path / "saved.npz", threshold=0.3, feature_shape=SMALL)


def test_build_dictionary_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_dictionary(tmp_path / "missing", feature_shape=SMALL)
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 1\)"):
        build_dictionary(tmp_path, tau=1.2, feature_shape=SMALL)
    with pytest.raises(ValueError, match="pass one of them"):
        build_dictionary(tmp_path, tau=0.25, threshold=0.3, feature_shape=SMALL)
    with pytest.raises(ValueError, match="found 0 numbered file"):
        build_dictionary(tmp_path, feature_shape=SMALL)
    write_mean_mask_txt(tmp_path / "mean_mask.txt", random_mean_masks()[0])
    with pytest.raises(ValueError, match="load_mean_masks"):
        build_dictionary(tmp_path / "mean_mask.txt", feature_shape=SMALL)


# --- synthetic masks ---------------------------------------------------------------------------


def footprint(cell: int, height: int, width: int) -> np.ndarray:
    """Feature positions whose receptive patch of the crop (an equal split) overlaps the cell."""
    x0, y0, x1, y1 = cell_bounds(cell)
    rows = np.arange(height)
    cols = np.arange(width)
    overlap_y = (rows * CROP_HEIGHT / height < y1) & ((rows + 1) * CROP_HEIGHT / height > y0)
    overlap_x = (cols * CROP_WIDTH / width < x1) & ((cols + 1) * CROP_WIDTH / width > x0)
    return np.outer(overlap_y, overlap_x)


def test_synthetic_masks_deterministic_and_normalised() -> None:
    first = synthetic_mean_masks(0, SMALL)
    assert first.shape == (NUM_CELLS, *SMALL) and first.dtype == np.float32
    np.testing.assert_array_equal(first, synthetic_mean_masks(0, SMALL))
    assert not np.array_equal(first, synthetic_mean_masks(1, SMALL))
    flat = first.reshape(NUM_CELLS, -1)
    np.testing.assert_allclose(flat.min(axis=1), 0.0)
    np.testing.assert_allclose(flat.max(axis=1), 1.0)
    validate_dictionary(first, binary=False)
    with pytest.raises(TypeError, match="seed must be a non-negative int"):
        synthetic_mean_masks(1.5, SMALL)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        synthetic_mean_masks(-1, SMALL)


@pytest.mark.parametrize("shape", [(512, 7, 6), (64, 14, 12), (128, 4, 4)])
def test_synthetic_masks_are_spatially_localised(shape: tuple[int, int, int]) -> None:
    _, height, width = shape
    binary = binarize_by_tau(synthetic_mean_masks(0, shape), 0.25)
    assert len({item.tobytes() for item in binary}) == NUM_CELLS
    for cell in range(NUM_CELLS):
        inside = footprint(cell, height, width)
        discard_rate = (binary[cell] == 0).mean(axis=0)
        assert discard_rate[inside].min() > discard_rate[~inside].max(), cell
        assert discard_rate[inside].mean() > 0.7
        assert discard_rate[inside].mean() > 3 * discard_rate[~inside].mean()
