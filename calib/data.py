"""Calibration and held-out face sets: aligned crops of the bundle's size with a traffic-like occlusion mix.

A source is a folder of images (searched recursively), a list file with one image path per line
(relative paths are taken from the list's folder), or ``synthetic`` for the project's seeded
synthetic faces. Sampling is deterministic from a seed. The deployed model sees occluded faces,
so every set carries occlusion vectors mixed like real traffic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH
from pdsn.model.sample_faces import occlusion_mix

SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class FaceSet:
    images: np.ndarray  # uint8 (N, H, W, 3), the bundle's crop size
    occlusion: np.ndarray  # float32 (N, 25)
    source: str
    synthetic: bool
    fingerprint: str  # identifies the exact images and occlusion, for the calibration cache

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "samples": len(self),
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint,
            "occluded_fraction": float((self.occlusion.sum(axis=1) > 0).mean()),
        }


def load_face_sets(
    source: str | Path,
    samples: int,
    holdout: int,
    seed: int = 0,
    progress: bool = True,
    size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH),
) -> tuple[FaceSet | None, FaceSet]:
    """Draw a calibration set (None when ``samples`` is 0) and a disjoint held-out set of crops of ``size``
    (height, width): the bundle's contract's."""
    if samples < 0 or holdout < 1:
        raise ValueError(f"--samples must be >= 0 and --holdout >= 1, got {samples} and {holdout}")
    if str(source) == SYNTHETIC:
        calibration = _synthetic_set(samples, seed, "calibration", size) if samples else None
        return calibration, _synthetic_set(holdout, seed + 1, "held-out", size)
    paths = list_images(Path(source))
    if len(paths) < samples + holdout:
        raise ValueError(
            f"--calib {source}: found {len(paths)} images, but {samples} calibration samples plus "
            f"{holdout} held-out faces are needed; pass --samples {max(len(paths) - holdout, 1)} "
            f"or add images (held-out faces are never calibration faces)"
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen = [paths[i] for i in sorted(order[:samples])]
    held = [paths[i] for i in sorted(order[samples : samples + holdout])]
    return (
        _file_set(chosen, f"{source} ({samples} of {len(paths)})", seed, progress, size) if samples else None,
        _file_set(held, f"{source} (held out: {holdout})", seed + 1, progress, size),
    )


def list_images(source: Path) -> list[Path]:
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif source.is_file():
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        paths = [(source.parent / line) if not Path(line).is_absolute() else Path(line) for line in lines if line]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--calib {source}: {len(missing)} listed images do not exist, e.g. {missing[:3]}")
    else:
        raise FileNotFoundError(
            f"--calib {source}: no such folder or list file; expected a folder of aligned crops of the "
            f"bundle's size, a text file listing them, or 'synthetic'"
        )
    if not paths:
        raise ValueError(f"--calib {source}: no .png/.jpg/.jpeg images found")
    return paths


def _synthetic_set(count: int, seed: int, role: str, size: tuple[int, int]) -> FaceSet:
    from pdsn.model.sample_faces import seeded_faces

    images = seeded_faces(count, seed=seed + 7919, size=size)
    occlusion = occlusion_mix(count, seed)
    return FaceSet(images, occlusion, f"synthetic faces ({role}, seed {seed})", True, _fingerprint(images, occlusion))


def _file_set(paths: list[Path], source: str, seed: int, progress: bool, size: tuple[int, int]) -> FaceSet:
    images = np.stack([read_crop(p, size) for p in _progress(paths, progress, "reading faces")])
    occlusion = occlusion_mix(len(images), seed)
    return FaceSet(images, occlusion, source, False, _fingerprint(images, occlusion))


def read_crop(path: Path, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)) -> np.ndarray:
    """An aligned RGB crop of ``size`` (height, width) as uint8; anything else is refused with the file named."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise ValueError(
                    f"image {path} has colour mode {image.mode}, expected RGB; "
                    f"calibration must see what the deployed model sees, so convert the set first"
                )
            if image.size != (size[1], size[0]):
                raise ValueError(
                    f"image {path} is {image.size[0]}x{image.size[1]} (WxH), expected "
                    f"aligned {size[1]}x{size[0]} crops (the bundle's)"
                )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path} could not be read: {exc}") from None


def _fingerprint(images: np.ndarray, occlusion: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(occlusion).tobytes())
    return digest.hexdigest()


def _progress(items: list, enabled: bool, description: str):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="img", leave=False)
