"""Training and evaluation data: labelled faces and (clean, occluded) pairs.

Three sources:

- ``synthetic``: the seeded SYNTHETIC identities of ``pdsn.train.synthetic``;
- an identity folder: ``ROOT/<identity>/<image>.png|jpg|jpeg``, aligned 112x96 RGB crops, one
  sub-folder per identity (class ids follow the sorted folder names), at least two images each;
- a reference pair list: one ``clean<TAB>occluded<TAB>label`` line per pair (``label`` the integer
  class id of both images; relative paths are taken from ``root``, by default the list's folder).

Every error names the file (and line) at fault, what was expected and how to fix it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.crop_alignment import CROP_ALIGNMENTS
from pdsn.train.occlusion import occlude
from pdsn.train.synthetic import SyntheticFaces

SYNTHETIC = "synthetic"
# The synthetic training identities every step uses unless told otherwise (stage 1 and stage 2
# must see the identities stage 0 was trained on: their labels index its classifier).
SYNTHETIC_IDENTITIES = 60
SYNTHETIC_IMAGES_PER_IDENTITY = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Occluders placed over one grid cell: a solid bar or a textured patch.
CELL_OCCLUDERS = ("bar", "patch")
# Pairs per cell for stage 1 and the dictionary. Measured on the demo (60 synthetic identities x 10
# images): 300 pairs per cell gave the FDM benefit of 600 (occluded accuracy with FDM 87.8% vs
# 88.3%, fold std 4.5) in half the stage-1 time, which the trunk's forward passes dominate.
DEFAULT_PAIRS_PER_CELL = 300
# Random stream tag of the per-cell occluders; pdsn.train.synthetic uses 0 and 1 and
# pdsn.train.evaluate 3 and 4, so that no two generators share a seed sequence.
CELL_OCCLUDER_STREAM = 2


@dataclass(frozen=True)
class LabelledFaces:
    """Aligned crops with class ids: ``images`` uint8 (N, H, W, 3) (112x96 crops or 150x150 chips), ``labels``
    int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class FacePairs:
    """Training pairs: ``clean`` and ``occluded`` uint8 (N, 112, 96, 3), one ``labels`` id each."""

    clean: np.ndarray
    occluded: np.ndarray
    labels: np.ndarray
    source: str


def synthetic_identities(num_identities: int, images_per_identity: int, seed: int) -> LabelledFaces:
    """SYNTHETIC faces as LabelledFaces (identity ``i`` is named ``synthetic-i``)."""
    faces = SyntheticFaces(num_identities, images_per_identity, seed)
    images, labels = faces.generate()
    names = tuple(f"synthetic-{i}" for i in range(num_identities))
    source = f"synthetic identities (seed {seed}, {num_identities} x {images_per_identity} images)"
    return LabelledFaces(images, labels, names, source)


def read_identity_folders(root: str | Path) -> LabelledFaces:
    """Read ``ROOT/<identity>/*`` crops; class ids follow the sorted identity folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"identity folder root {str(root)!r} does not exist or is not a folder; expected "
            f"ROOT/<identity>/<image>{'|'.join(IMAGE_SUFFIXES)}, or pass 'synthetic'"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(
            f"{root} holds no identity folders; expected one sub-folder of aligned 112x96 crops per identity"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise ValueError(
                f"identity folder {folder} has {len(files)} image(s) "
                f"({', '.join(p.name for p in files) or 'none'}); every identity needs at least "
                "2 images (same-identity pairs and held-out views): add images or remove the folder"
            )
        images.extend(read_face(p) for p in files)
        labels.extend([label] * len(files))
    sizes = sorted({image.shape[1::-1] for image in images})
    if len(sizes) > 1:
        raise ValueError(
            f"{root} mixes crop sizes {', '.join(f'{w}x{h}' for w, h in sizes)} (WxH); every crop of a set must be "
            "aligned for the same network"
        )
    return LabelledFaces(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        tuple(p.name for p in folders),
        f"identity folders under {root}",
    )


def load_labelled_faces(source: str | Path, num_identities: int, images_per_identity: int, seed: int) -> LabelledFaces:
    """``synthetic`` (sized by the other arguments) or an identity folder root."""
    if str(source) == SYNTHETIC:
        return synthetic_identities(num_identities, images_per_identity, seed)
    return read_identity_folders(source)


def read_pair_list(path: str | Path, root: str | Path | None = None) -> FacePairs:
    """Read a reference pair list (``clean<TAB>occluded<TAB>label`` per line) and its images."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pair list {str(path)!r} does not exist; expected a text file of clean<TAB>occluded<TAB>label lines"
        )
    base = Path(root) if root is not None else path.parent
    clean, occluded, labels = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 3:
            raise ValueError(
                f"{path}:{number}: {len(fields)} field(s) in {line!r}, expected 3: clean<TAB>occluded<TAB>label"
            )
        first, second, label = (field.strip() for field in fields)
        if not label.lstrip("+").isdigit():
            raise ValueError(
                f"{path}:{number}: label {label!r} is not a class id; expected an integer >= 0 "
                "(the identity both images show)"
            )
        files = [Path(name) if Path(name).is_absolute() else base / name for name in (first, second)]
        for role, file in zip(("clean", "occluded"), files):
            if not file.is_file():
                raise FileNotFoundError(
                    f"{path}:{number}: {role} image {str(file)!r} does not exist; relative paths "
                    f"are taken from {str(base)!r} (pass --root to change that)"
                )
        clean.append(read_face(files[0]))
        occluded.append(read_face(files[1]))
        labels.append(int(label))
    if not labels:
        raise ValueError(f"pair list {path} holds no pairs")
    return FacePairs(
        np.stack(clean),
        np.stack(occluded),
        np.asarray(labels, dtype=np.int64),
        f"pair list {path}",
    )


def read_face(path: Path) -> np.ndarray:
    """An aligned crop (112x96, or dlib's 150x150 chip) as uint8 RGB (grey or RGBA files are converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path} could not be read: {exc}") from None
    sizes = {(a.height, a.width) for a in CROP_ALIGNMENTS.values()}
    if array.shape[:2] not in sizes:
        expected = " or ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise ValueError(
            f"image {path} is {array.shape[1]}x{array.shape[0]} (WxH); expected an aligned "
            f"{expected} crop: align it first (5-point template)"
        )
    return array


def occlude_cell(faces: LabelledFaces, cell: int, seed: int, count: int | None = None) -> tuple[FacePairs, np.ndarray]:
    """``count`` (clean, occluded) pairs for one grid cell, and the row of ``faces`` of each pair.

    ``None`` makes one pair of every face. Otherwise the faces are taken in seeded random orders
    until ``count`` pairs are made: a subset of them when ``count`` is smaller, every face more
    than once (each time with a new occluder) when larger. The occluder alternates between a bar
    and a textured patch over the cell. Everything is drawn from
    ``np.random.default_rng([seed, CELL_OCCLUDER_STREAM, cell])``, so each cell's pairs are
    reproducible and differ from the other cells'.
    """
    total = len(faces.images)
    if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1):
        raise ValueError(f"count (pairs per cell) must be an integer >= 1 or None, got {count!r}")
    rng = np.random.default_rng([seed, CELL_OCCLUDER_STREAM, cell])
    if count is None:
        rows = np.arange(total)
    else:
        rounds = -(-int(count) // total)
        rows = np.concatenate([rng.permutation(total) for _ in range(rounds)])[:count]
    clean = faces.images[rows]
    occluded = np.empty_like(clean)
    for k, image in enumerate(clean):
        occluded[k] = occlude(image, CELL_OCCLUDERS[k % len(CELL_OCCLUDERS)], rng, cell=cell).image
    pairs = FacePairs(clean, occluded, faces.labels[rows], f"{faces.source}, cell {cell} occluded")
    return pairs, rows
