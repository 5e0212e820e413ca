"""The mask dictionary: one Feature Discarding Mask (FDM) per grid cell (numpy only).

Item j masks the trunk's (C, H, W) feature map for an occlusion of grid cell j: 1 = keep,
0 = discard. The reference method averages the mask generator's min-max normalised outputs for a
cell into a real-valued ``mean_mask.txt`` (one value per line, C, H, W order) and binarises it by
discarding the smallest tau fraction. Items of several occluded cells combine by product (AND).
"""

from __future__ import annotations

import json
import numbers
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.grid import (
    CROP_HEIGHT,
    CROP_WIDTH,
    NUM_CELLS,
    cell_bounds,
    validate_occlusion_vectors,
)
from pdsn.model.validation import as_real_array

DEFAULT_FEATURE_SHAPE = (512, 7, 6)
DEFAULT_TAU = 0.25
DICTIONARY_FORMAT = "pdsn-mask-dictionary"
DICTIONARY_FORMAT_VERSION = 1

PathLike = str | os.PathLike
FeatureShape = tuple[int, int, int]


def _validate_feature_shape(feature_shape: object) -> FeatureShape:
    if (
        not isinstance(feature_shape, (tuple, list))
        or len(feature_shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in feature_shape)
    ):
        raise ValueError(
            "feature_shape must be three positive integers (C, H, W) of the trunk's feature map, "
            f"e.g. (512, 7, 6), got {feature_shape!r}"
        )
    return int(feature_shape[0]), int(feature_shape[1]), int(feature_shape[2])


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _check_fraction(value: object, argument: str, include_one: bool) -> float:
    interval = "[0, 1]" if include_one else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a number in {interval}, got {type(value).__name__} {value!r}")
    number = float(value)
    if not (0.0 <= number < 1.0 or (include_one and number == 1.0)):
        raise ValueError(f"{argument} must be a number in {interval}, got {value!r}")
    return number


def _check_unit_range(values: np.ndarray, argument: str, line_numbers: bool = False) -> None:
    """Require finite values in [0, 1], naming the first bad entry (a 1-based line for text)."""
    flat = values.reshape(-1)
    nonfinite = ~np.isfinite(flat)
    if nonfinite.any():
        first = int(np.argmax(nonfinite))
        where = f"line {first + 1}" if line_numbers else f"flat index {first}"
        raise ValueError(
            f"{argument} has {int(nonfinite.sum())} NaN/Inf value(s), the first at {where} "
            f"({flat[first]}); mask values must be finite numbers in [0, 1]"
        )
    low, high = float(flat.min()), float(flat.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{argument} has values outside [0, 1]: min {low:.6g}, max {high:.6g}; mean masks "
            "are averages of min-max normalised masks and binary masks are 0/1"
        )


def _count_non_binary(values: np.ndarray) -> int:
    return int(np.count_nonzero((values != 0) & (values != 1)))


def validate_dictionary(masks: object, binary: bool = True, argument: str = "dictionary") -> np.ndarray:
    """Check a (25, C, H, W) stack of masks and return it as a float32 copy.

    Values must be finite and in [0, 1]; with ``binary`` they must be exactly 0 or 1.
    """
    array = as_real_array(masks, argument, "a (25, C, H, W) array")
    if array.ndim != 4 or array.shape[0] != NUM_CELLS or 0 in array.shape:
        raise ValueError(
            f"{argument} must have shape (25, C, H, W), one mask per 5x5 grid cell over the "
            f"C x H x W feature map (e.g. (25, 512, 7, 6)), got shape {array.shape}"
        )
    _check_unit_range(array, argument)
    if binary:
        others = _count_non_binary(array)
        if others:
            raise ValueError(
                f"{argument} must be binary (1 = keep, 0 = discard), but {others} of "
                f"{array.size} values are neither 0 nor 1; binarise mean masks first with "
                "binarize_by_tau(mean_masks, tau=0.25) or binarize_by_threshold, or use "
                "build_dictionary"
            )
    return array.astype(np.float32)


@dataclass(frozen=True, eq=False)
class MaskDictionary:
    """A binary mask dictionary and how it was made; ``masks`` is kept as a read-only copy."""

    masks: np.ndarray
    tau: float | None
    threshold: float | None
    source: str

    def __post_init__(self) -> None:
        masks = validate_dictionary(self.masks)
        masks.setflags(write=False)
        object.__setattr__(self, "masks", masks)
        if self.tau is not None:
            object.__setattr__(self, "tau", _check_fraction(self.tau, "tau", False))
        if self.threshold is not None:
            threshold = _check_fraction(self.threshold, "threshold", True)
            object.__setattr__(self, "threshold", threshold)
        if self.tau is not None and self.threshold is not None:
            raise ValueError(
                "a dictionary is binarised by tau or by threshold, not both; got "
                f"tau={self.tau} and threshold={self.threshold}: set the unused one to None"
            )
        if not isinstance(self.source, str):
            raise TypeError(
                f"source must be a str describing where the masks came from, got {type(self.source).__name__}"
            )

    @property
    def feature_shape(self) -> FeatureShape:
        channels, height, width = self.masks.shape[1:]
        return channels, height, width

    @property
    def num_cells(self) -> int:
        return self.masks.shape[0]

    def combine(self, occlusion: object) -> np.ndarray:
        """AND of the occluded cells' items: (C, H, W) for a (25,) vector, (N, C, H, W) for (N, 25).

        Computed as ``occlusion @ (1 - D) == 0``, the formula of the exported graph; all ones
        where no cell is occluded.
        """
        vectors = validate_occlusion_vectors(occlusion)
        discard_votes = vectors @ (1.0 - self.masks.reshape(self.num_cells, -1))
        combined = (discard_votes == 0).astype(np.float32).reshape(-1, *self.feature_shape)
        return combined[0] if np.asarray(occlusion).ndim == 1 else combined

    def provenance(self) -> dict:
        """JSON-serialisable record: tau, threshold, source, shape, keep fraction per item."""
        keep = self.masks.reshape(self.num_cells, -1).mean(axis=1)
        return {
            "tau": self.tau,
            "threshold": self.threshold,
            "source": self.source,
            "feature_shape": list(self.feature_shape),
            "num_cells": self.num_cells,
            "keep_fraction": {
                "min": float(keep.min()),
                "mean": float(keep.mean()),
                "max": float(keep.max()),
            },
        }


def _existing_file(path: object, argument: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a file path (str or os.PathLike), got {type(path).__name__}")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{argument} {str(file)!r} does not exist; check the path")
    if not file.is_file():
        raise ValueError(f"{argument} {str(file)!r} is not a regular file (a directory?)")
    return file


def read_mean_mask_txt(path: PathLike, feature_shape: FeatureShape = DEFAULT_FEATURE_SHAPE) -> np.ndarray:
    """Read one reference ``mean_mask.txt`` (a float per line, C, H, W order): float32 (C, H, W)."""
    shape = _validate_feature_shape(feature_shape)
    file = _existing_file(path, "mean mask file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{file} is not a text file; a mean_mask.txt holds one float per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    values = np.empty(len(lines), dtype=np.float64)
    for index, line in enumerate(lines):
        try:
            values[index] = float(line)
        except ValueError:
            raise ValueError(
                f"{file}, line {index + 1}: {line.strip()!r} is not a number; a mean_mask.txt holds one float per line"
            ) from None
    expected = int(np.prod(shape))
    if values.size != expected:
        raise ValueError(
            f"{file} has {values.size} values, expected {expected} = {_shape_text(shape)} (one "
            "per line, C, H, W order); pass the model's feature_shape if it is not (512, 7, 6)"
        )
    _check_unit_range(values, str(file), line_numbers=True)
    return values.astype(np.float32).reshape(shape)


def write_mean_mask_txt(path: PathLike, mask: object) -> None:
    """Write one (C, H, W) mask in the ``mean_mask.txt`` format; ``%.9g`` round-trips float32."""
    array = as_real_array(mask, "mask", "a (C, H, W) array")
    if array.ndim != 3:
        raise ValueError(
            f"mask must be one dictionary item of shape (C, H, W), e.g. (512, 7, 6), got shape {array.shape}"
        )
    _check_unit_range(array, "mask")
    np.savetxt(path, array.astype(np.float64).reshape(-1), fmt="%.9g")


def _find_mean_mask_files(directory: Path) -> list[Path]:
    """The 25 ``*.txt`` files under ``directory`` in cell order.

    A file's cell number is the last integer in its path relative to ``directory``.
    """
    numbered: dict[int, list[str]] = {}
    for file in sorted(directory.rglob("*.txt")):
        relative = file.relative_to(directory).as_posix()
        numbers_in_path = re.findall(r"\d+", relative)
        if file.is_file() and numbers_in_path:
            numbered.setdefault(int(numbers_in_path[-1]), []).append(relative)
    found = sorted(numbered)
    unique = all(len(names) == 1 for names in numbered.values())
    for first in (0, 1):
        if unique and found == list(range(first, first + NUM_CELLS)):
            return [directory / numbered[number][0] for number in found]
    listing = "; ".join(f"{number}: {', '.join(numbered[number])}" for number in found)
    raise ValueError(
        f"{directory} must hold exactly 25 *.txt mean masks numbered 0..24 or 1..25 by the last "
        "integer in their relative path (e.g. cell_7/mean_mask.txt or mean_mask_07.txt), one "
        f"file per number; found {sum(len(names) for names in numbered.values())} numbered "
        f"file(s): {listing or 'none'}"
    )


def load_mean_masks(
    source: PathLike | Sequence[PathLike], feature_shape: FeatureShape = DEFAULT_FEATURE_SHAPE
) -> tuple[np.ndarray, list[str]]:
    """Read the 25 mean masks from a directory, or from 25 paths in cell order 0..24.

    Returns float32 (25, C, H, W) and the files read, in cell order.
    """
    shape = _validate_feature_shape(feature_shape)
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        if not directory.exists():
            raise FileNotFoundError(
                f"source {str(directory)!r} does not exist; pass a directory of 25 "
                "mean_mask.txt files or a list of 25 paths"
            )
        if not directory.is_dir():
            raise ValueError(
                f"source {str(directory)!r} is a file, expected a directory of 25 mean_mask.txt "
                "files or a list of 25 paths; read .npy/.npz arrays with load_dictionary_array "
                "or build_dictionary"
            )
        files = _find_mean_mask_files(directory)
    else:
        if not isinstance(source, Iterable):
            raise TypeError(f"source must be a directory or a sequence of 25 paths, got {type(source).__name__}")
        files = [Path(path) for path in source]
        if len(files) != NUM_CELLS:
            raise ValueError(
                f"source must list 25 mean_mask.txt paths, one per grid cell in order 0..24, got {len(files)}"
            )
    masks = np.stack([read_mean_mask_txt(file, shape) for file in files])
    return masks, [str(file) for file in files]


def _read_arrays(file: Path) -> dict[str, np.ndarray]:
    """Every array in a .npy (named "array") or .npz file; pickled objects are refused."""
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(
            f"{file} must be a .npy or .npz file, got suffix {suffix!r}; mean_mask.txt files "
            "are read with load_mean_masks (a directory or a list of 25 paths)"
        )
    try:
        if suffix == ".npy":
            return {"array": np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {file} as a numpy {suffix} file without pickle: {error}") from error


def _pick_array(arrays: dict[str, np.ndarray], file: Path) -> np.ndarray:
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    named = [name for name in ("dictionary", "masks") if name in arrays]
    if len(named) != 1:
        raise ValueError(
            f"{file} holds arrays {sorted(arrays)}; expected exactly one array, or exactly one "
            "of them named 'dictionary' or 'masks'"
        )
    return arrays[named[0]]


def _as_items(array: np.ndarray, shape: FeatureShape, file: Path) -> np.ndarray:
    """Reshape (25, C*H*W) to (25, C, H, W) and check the values; other shapes are errors."""
    flat_shape = (NUM_CELLS, int(np.prod(shape)))
    if array.shape == flat_shape:
        array = array.reshape(NUM_CELLS, *shape)
    elif array.shape != (NUM_CELLS, *shape):
        raise ValueError(
            f"{file} holds an array of shape {array.shape}, expected {(NUM_CELLS, *shape)} or "
            f"{flat_shape} for feature_shape {shape}; pass feature_shape if the model's feature "
            f"map is not {_shape_text(shape)}"
        )
    return validate_dictionary(array, binary=False, argument=str(file))


def load_dictionary_array(path: PathLike, feature_shape: FeatureShape = DEFAULT_FEATURE_SHAPE) -> np.ndarray:
    """Mean or binary masks from a .npy/.npz as float32 (25, C, H, W); (25, C*H*W) is reshaped."""
    shape = _validate_feature_shape(feature_shape)
    file = _existing_file(path, "path")
    return _as_items(_pick_array(_read_arrays(file), file), shape, file)


def binarize_by_tau(mean_masks: object, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Per item, discard (0) exactly round(tau * C*H*W) smallest values and keep (1) the rest.

    Ties are broken by a stable sort: among equal values the earliest in C, H, W order go first.
    """
    values = validate_dictionary(mean_masks, binary=False, argument="mean_masks")
    fraction = _check_fraction(tau, "tau", include_one=False)
    flat = values.reshape(NUM_CELLS, -1)
    smallest = np.argsort(flat, axis=1, kind="stable")[:, : round(fraction * flat.shape[1])]
    binary = np.ones_like(flat)
    np.put_along_axis(binary, smallest, 0.0, axis=1)
    return binary.reshape(values.shape)


def binarize_by_threshold(mean_masks: object, threshold: float) -> np.ndarray:
    """Keep (1) every value >= threshold, discard (0) the rest."""
    values = validate_dictionary(mean_masks, binary=False, argument="mean_masks")
    threshold = _check_fraction(threshold, "threshold", include_one=True)
    return (values >= threshold).astype(np.float32)


def save_dictionary(path: PathLike, dictionary: MaskDictionary) -> None:
    """Write masks and provenance (a JSON string) to a compressed .npz for load_dictionary."""
    if not isinstance(dictionary, MaskDictionary):
        raise TypeError(f"dictionary must be a MaskDictionary, got {type(dictionary).__name__}")
    file = Path(path)
    if file.suffix.lower() != ".npz":
        raise ValueError(f"path must end in .npz (numpy would otherwise append it), got {str(file)!r}")
    provenance = {
        "format": DICTIONARY_FORMAT,
        "version": DICTIONARY_FORMAT_VERSION,
        **dictionary.provenance(),
    }
    np.savez_compressed(file, masks=dictionary.masks, provenance=np.array(json.dumps(provenance)))


def _saved_dictionary(arrays: dict[str, np.ndarray], file: Path) -> MaskDictionary:
    try:
        provenance = json.loads(str(arrays["provenance"]))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: the 'provenance' entry is not valid JSON ({error})") from None
    if not isinstance(provenance, dict) or provenance.get("format") != DICTIONARY_FORMAT:
        raise ValueError(
            f"{file}: the 'provenance' entry is not a {DICTIONARY_FORMAT!r} record written by save_dictionary"
        )
    if provenance.get("version") != DICTIONARY_FORMAT_VERSION:
        raise ValueError(
            f"{file} is {DICTIONARY_FORMAT} version {provenance.get('version')!r}; this "
            f"pdsn-deploy reads version {DICTIONARY_FORMAT_VERSION}"
        )
    missing = [key for key in ("tau", "threshold", "source") if key not in provenance]
    if "masks" not in arrays:
        missing.append("the 'masks' array")
    if missing:
        raise ValueError(f"{file} lacks {', '.join(missing)}; re-save it with save_dictionary")
    return MaskDictionary(
        masks=arrays["masks"],
        tau=provenance["tau"],
        threshold=provenance["threshold"],
        source=provenance["source"],
    )


def load_dictionary(path: PathLike, feature_shape: FeatureShape | None = None) -> MaskDictionary:
    """Read a dictionary written by save_dictionary, or a plain .npy/.npz of binary masks.

    A plain array gets tau = threshold = None and the path as its source; ``feature_shape``
    (default (512, 7, 6)) reshapes a (25, C*H*W) one. A saved dictionary carries its own shape,
    which must match ``feature_shape`` when that is given.
    """
    shape = _validate_feature_shape(DEFAULT_FEATURE_SHAPE if feature_shape is None else feature_shape)
    file = _existing_file(path, "path")
    arrays = _read_arrays(file)
    if "provenance" not in arrays:
        masks = _as_items(_pick_array(arrays, file), shape, file)
        return MaskDictionary(masks=masks, tau=None, threshold=None, source=str(file))
    dictionary = _saved_dictionary(arrays, file)
    if feature_shape is not None and dictionary.feature_shape != shape:
        raise ValueError(
            f"{file} holds a dictionary over feature maps of shape {dictionary.feature_shape}, "
            f"but feature_shape {shape} was asked for; the model and dictionary do not match"
        )
    return dictionary


def build_dictionary(
    source: PathLike | Sequence[PathLike],
    tau: float | None = None,
    threshold: float | None = None,
    feature_shape: FeatureShape = DEFAULT_FEATURE_SHAPE,
) -> MaskDictionary:
    """Build a binary dictionary from 25 mean_mask.txt files (directory or list) or a .npy/.npz.

    Mean masks are binarised by ``threshold`` when given, else by ``tau`` (DEFAULT_TAU when
    neither is). Masks that are already binary are kept as they are, and a file written by
    save_dictionary comes back with its own provenance: asking to binarise those again is refused
    rather than silently ignored.
    """
    shape = _validate_feature_shape(feature_shape)
    if tau is not None and threshold is not None:
        raise ValueError(
            f"tau ({tau}) and threshold ({threshold}) are two ways to binarise mean masks; pass one of them"
        )
    if threshold is not None:
        _check_fraction(threshold, "threshold", include_one=True)
    elif tau is not None:
        _check_fraction(tau, "tau", include_one=False)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        file = Path(source)
        arrays = _read_arrays(file)
        if "provenance" in arrays:
            _refuse_binarising(file, tau, threshold)
            return load_dictionary(file, shape)
        values = _as_items(_pick_array(arrays, file), shape, file)
        origin = f"array file {file}"
    else:
        values, files = load_mean_masks(source, shape)
        origin = f"mean_mask.txt files {', '.join(files)}"
    if _count_non_binary(values) == 0:
        _refuse_binarising(origin, tau, threshold)
        return MaskDictionary(masks=values, tau=None, threshold=None, source=f"binary masks from {origin}")
    if threshold is not None:
        masks = binarize_by_threshold(values, threshold)
    else:
        tau = DEFAULT_TAU if tau is None else tau
        masks = binarize_by_tau(values, tau)
    return MaskDictionary(masks=masks, tau=tau, threshold=threshold, source=f"mean masks from {origin}")


def _refuse_binarising(source: object, tau: float | None, threshold: float | None) -> None:
    if tau is None and threshold is None:
        return
    given = f"tau {tau}" if tau is not None else f"threshold {threshold}"
    raise ValueError(
        f"{given} was given, but the dictionary {source} is already binary, so there is nothing to "
        f"binarise; pass the folder of its 25 mean_mask.txt files to binarise them again, or drop {given.split()[0]}"
    )


def synthetic_mean_masks(seed: int, feature_shape: FeatureShape = DEFAULT_FEATURE_SHAPE) -> np.ndarray:
    """Deterministic stand-in mean masks for the demo model: float32 (25, C, H, W) in [0, 1].

    For cell j, the feature positions overlapping the cell (its pixel bounds scaled onto the
    H x W map, partial overlaps included) get low values in most channels, fading a little into
    the neighbourhood as receptive fields would; a seeded per-channel sensitivity and noise make
    the items differ. Each item is min-max normalised like the reference's averaged masks.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    channels, height, width = _validate_feature_shape(feature_shape)
    rng = np.random.default_rng(seed)
    row = np.arange(height, dtype=np.float64)
    col = np.arange(width, dtype=np.float64)
    items = np.empty((NUM_CELLS, channels, height, width), dtype=np.float32)
    for cell in range(NUM_CELLS):
        x0, y0, x1, y1 = cell_bounds(cell)
        fx0, fx1 = x0 * width / CROP_WIDTH, x1 * width / CROP_WIDTH
        fy0, fy1 = y0 * height / CROP_HEIGHT, y1 * height / CROP_HEIGHT
        overlap_x = np.clip(np.minimum(col + 1, fx1) - np.maximum(col, fx0), 0.0, 1.0)
        overlap_y = np.clip(np.minimum(row + 1, fy1) - np.maximum(row, fy0), 0.0, 1.0)
        overlap = np.outer(overlap_y, overlap_x)
        core = np.where(overlap > 0, 0.5 + 0.5 * overlap, 0.0)
        distance_squared = (row[:, None] + 0.5 - (fy0 + fy1) / 2) ** 2 + (col[None, :] + 0.5 - (fx0 + fx1) / 2) ** 2
        spatial = np.maximum(core, 0.35 * np.exp(-distance_squared / 2.0))
        sensitive = rng.random(channels) < 0.8
        sensitivity = np.where(sensitive, rng.uniform(0.6, 1.0, channels), rng.uniform(0.0, 0.2, channels))
        noise = 0.15 * rng.random((channels, height, width))
        item = 1.0 - sensitivity[:, None, None] * spatial + noise
        items[cell] = (item - item.min()) / (item.max() - item.min())
    return items
