"""Checking and shaping what callers pass in: image batches and occlusion, per the contract.

Occlusion is accepted as
- ``None``: no cell occluded;
- a numpy array of 0/1, shape (25,) for every image or (N, 25) per image;
- a Python list/tuple/set of cell ids (0..24) for every image;
- a list of length N whose items are either of the two forms above, one per image;
- ``Occlusion`` values, one for every image or one per image, which pass unchecked.
A plain Python list is always read as cell ids, never as a 25-vector, so the two cannot be
confused; pass vectors as numpy arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from pdsn.errors import InputError, InputTypeError
from pdsn.model.bundle_format import ModelContract
from pdsn.model.grid import validate_occlusion_vectors
from pdsn.model.occlusion import NO_OCCLUSION, Occlusion, from_checked_vectors

# Float-input bundles take (x/255 - 0.5)/0.5; allow rounding from other normalisation code.
FLOAT_RANGE_TOLERANCE = 1e-3


def prepare_images(images: object, contract: ModelContract, argument: str = "images") -> np.ndarray:
    """Return a contiguous batch in the graph's input layout, or raise naming what is wrong."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(argument, f"{argument}: empty batch; pass at least one image")
        items = [_one_image(img, contract, f"{argument}[{i}]") for i, img in enumerate(images)]
        return np.ascontiguousarray(np.stack(items))
    if not isinstance(images, np.ndarray):
        raise InputTypeError(
            argument, f"{argument}: expected a numpy array or a list of arrays, got {type(images).__name__}"
        )
    if images.ndim == 3:
        return np.ascontiguousarray(_one_image(images, contract, argument)[None])
    if images.ndim != 4:
        raise InputError(
            argument,
            f"{argument}: expected one image {_shape_text(contract)} or a batch "
            f"[N, {', '.join(map(str, contract.image_shape))}], got shape {images.shape}",
        )
    if images.shape[0] == 0:
        raise InputError(argument, f"{argument}: empty batch (shape {images.shape}); pass at least one image")
    _check_image(images[0], contract, argument, batch_shape=images.shape)
    return np.ascontiguousarray(_check_values(images, contract, argument))


def prepare_occlusion(occlusion: object, count: int, argument: str = "occlusion") -> tuple[Occlusion, ...]:
    """One checked ``Occlusion`` per image. ``Occlusion`` values (one for all, or one per image) were checked
    where they were made and pass as they are."""
    if occlusion is None:
        return (NO_OCCLUSION,) * count
    if isinstance(occlusion, Occlusion):
        return (occlusion,) * count
    if isinstance(occlusion, np.ndarray):
        vectors = validate_occlusion_vectors(occlusion, argument)
        if len(vectors) == 1:
            return from_checked_vectors(vectors) * count
        _check_count(len(vectors), count, argument, "occlusion vectors", "or one (25,) vector for all")
        return from_checked_vectors(vectors)
    if isinstance(occlusion, Sequence) and all(isinstance(item, Occlusion) for item in occlusion) and occlusion:
        _check_count(len(occlusion), count, argument, "occlusions", "or one for all")
        return tuple(occlusion)
    if isinstance(occlusion, (set, frozenset)) or _is_id_list(occlusion):
        return (Occlusion.from_cells(occlusion, argument),) * count  # type: ignore[arg-type]  # the id check names bad items
    if isinstance(occlusion, Sequence) and not isinstance(occlusion, (str, bytes)):
        _check_count(len(occlusion), count, argument, "entries", "")
        return tuple(prepare_occlusion(item, 1, f"{argument}[{i}]")[0] for i, item in enumerate(occlusion))
    raise InputTypeError(
        argument,
        f"{argument}: expected None, a numpy 0/1 array of shape (25,) or (N, 25), or a list of "
        f"cell ids 0..24; got {type(occlusion).__name__}",
    )


def _check_count(given: int, count: int, argument: str, what: str, otherwise: str) -> None:
    if given != count:
        alternative = f", {otherwise}" if otherwise else ""
        raise InputError(argument, f"{argument}: {given} {what} for {count} images; pass one per image{alternative}")


def _is_id_list(value: object) -> bool:
    """A flat Python sequence of scalars (ints, or bad scalars that the id check will name)."""
    if not isinstance(value, (list, tuple)):
        return False
    return all(not isinstance(v, (Iterable, np.ndarray)) or isinstance(v, (str, bytes)) for v in value)


def _one_image(image: object, contract: ModelContract, argument: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputTypeError(argument, f"{argument}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise InputError(argument, f"{argument}: expected one image {_shape_text(contract)}, got shape {image.shape}")
    _check_image(image, contract, argument, batch_shape=None)
    return _check_values(image, contract, argument)


def _check_image(image: np.ndarray, contract: ModelContract, argument: str, batch_shape: tuple | None) -> None:
    given = f"shape {batch_shape if batch_shape is not None else image.shape}"
    if contract.image_layout == "nhwc-uint8":
        height, width, channels = image.shape
        if image.shape == (contract.channels, contract.height, contract.width):
            raise InputError(
                argument,
                f"{argument}: {given} looks channels-first; this bundle takes channels-last RGB "
                f"{_shape_text(contract)} (use image.transpose(1, 2, 0))",
            )
    else:
        channels, height, width = image.shape
    if channels != contract.channels:
        hint = " (convert to RGB first, e.g. PIL Image.convert('RGB'))" if channels in (1, 2, 4) else ""
        raise InputError(argument, f"{argument}: {given} has {channels} channels, expected 3 (RGB){hint}")
    if (height, width) != (contract.height, contract.width):
        raise InputError(
            argument,
            f"{argument}: {given} is {height}x{width} (HxW), expected an aligned "
            f"{contract.height}x{contract.width} face crop; align the face first by passing its "
            f"5 landmarks (landmarks=...), see pdsn.runtime.preprocess.align_face",
        )


def _check_values(images: np.ndarray, contract: ModelContract, argument: str) -> np.ndarray:
    if contract.image_layout == "nhwc-uint8":
        if images.dtype != np.uint8:
            raise InputTypeError(
                argument,
                f"{argument}: dtype {images.dtype}, expected uint8 RGB (0..255); this bundle "
                f"normalises inside the graph. If your values are 0..255 floats use "
                f"np.clip(x, 0, 255).astype(np.uint8); if already normalised, export with "
                f"--float-input",
            )
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise InputTypeError(
            argument,
            f"{argument}: dtype {images.dtype}, expected float32 normalised as (x/255 - 0.5)/0.5 "
            f"(this bundle was exported with float input)",
        )
    bad = ~np.isfinite(images)
    if bad.any():
        raise InputError(argument, f"{argument}: {int(bad.sum())} values are NaN or Inf; all must be finite")
    low, high = float(images.min()), float(images.max())
    if low < -1 - FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
        raise InputError(
            argument,
            f"{argument}: values span [{low:.4g}, {high:.4g}], expected [-1, 1] as (x/255 - 0.5)/0.5 of 0..255 "
            f"pixels; if these are 0..255 pixel values, pass (x / 255 - 0.5) / 0.5",
        )
    return images.astype(np.float32, copy=False)


def _shape_text(contract: ModelContract) -> str:
    dtype = "uint8" if contract.image_layout == "nhwc-uint8" else "float32"
    return f"[{', '.join(map(str, contract.image_shape))}] {dtype}"


def uint8_contract(contract: ModelContract) -> ModelContract:
    """Decoded and aligned images are uint8 HxWx3 whatever the bundle takes; they are checked as such."""
    if contract.image_layout == "nhwc-uint8":
        return contract
    return dataclasses.replace(contract, image_layout="nhwc-uint8")


def to_model_layout(batch: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 NHWC as the bundle takes it: as is, or normalised NCHW float32 for a float-input bundle."""
    if contract.image_layout == "nhwc-uint8":
        return batch
    return contract.normalized_nchw(batch)
