"""Seeded test inputs: face-like aligned 112x96 RGB crops and traffic-like occlusion vectors.

Not a face model: a skin-toned ellipse with darker eyes, brows, nose and mouth placed at the
alignment template's landmarks, with per-image jitter in geometry, colour and lighting over a
smooth random background. Enough to give convolutional features realistic spatial structure.
"""

from __future__ import annotations

import numpy as np

from pdsn.model.alignment import TEMPLATE_112X96
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, NUM_CELLS, SCARF_CELLS, SUNGLASSES_CELLS, cells_to_vector

# Share of each occlusion kind in a set: none, one random cell, sunglasses, bottom row.
OCCLUSION_MIX = (("none", 0.4), ("one-cell", 0.3), ("sunglasses", 0.15), ("bottom-row", 0.15))


def seeded_faces(count: int, seed: int = 0, size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)) -> np.ndarray:
    """Return ``count`` images, uint8 (count, height, width, 3) for ``size`` (height, width), identical for
    the same seed; drawn at 112x96 and resized bilinearly to another size."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:CROP_HEIGHT, 0:CROP_WIDTH].astype(np.float32)
    faces = np.empty((count, CROP_HEIGHT, CROP_WIDTH, 3), dtype=np.uint8)
    for i in range(count):
        coarse = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.float32)
        image = np.kron(coarse, np.ones((28, 24, 1), dtype=np.float32))
        landmarks = TEMPLATE_112X96 + rng.normal(0, 1.5, size=TEMPLATE_112X96.shape)
        centre_x, centre_y = landmarks[2]
        skin = rng.uniform([150, 100, 80], [235, 190, 160]).astype(np.float32)
        face = ((xs - centre_x) / rng.uniform(36, 44)) ** 2 + ((ys - centre_y + 6) / rng.uniform(50, 58)) ** 2 < 1
        image[face] = skin
        features = [(x, y, 4.5, 3.0) for x, y in landmarks[:2]]  # eyes
        features += [(x, y - 9, 7.0, 1.8) for x, y in landmarks[:2]]  # brows
        features += [(landmarks[2][0], landmarks[2][1], 3.5, 5.0)]  # nose
        mouth_x, mouth_y = landmarks[3:].mean(axis=0)
        features += [(mouth_x, mouth_y, abs(landmarks[4][0] - landmarks[3][0]) / 2, 3.0)]
        for x, y, half_w, half_h in features:
            spot = ((xs - x) / half_w) ** 2 + ((ys - y) / half_h) ** 2 < 1
            image[spot] = skin * rng.uniform(0.25, 0.6)
        light = 1.0 + rng.uniform(-0.35, 0.35) * (xs - CROP_WIDTH / 2) / CROP_WIDTH
        image = image * light[..., None] * rng.uniform(0.75, 1.2)
        image += rng.normal(0, 6, size=image.shape)
        faces[i] = np.clip(image, 0, 255).astype(np.uint8)
    if size == (CROP_HEIGHT, CROP_WIDTH):
        return faces
    return np.stack([_resized(face, size) for face in faces])


def _resized(face: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(face).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def occlusion_mix(count: int, seed: int) -> np.ndarray:
    """Occlusion vectors in the proportions of OCCLUSION_MIX, in a seeded random order."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(OCCLUSION_MIX), size=count, p=[share for _, share in OCCLUSION_MIX])
    vectors = np.zeros((count, NUM_CELLS), dtype=np.float32)
    for row, kind in enumerate(kinds):
        name = OCCLUSION_MIX[kind][0]
        if name == "one-cell":
            vectors[row] = cells_to_vector([int(rng.integers(NUM_CELLS))])
        elif name == "sunglasses":
            vectors[row] = cells_to_vector(SUNGLASSES_CELLS)
        elif name == "bottom-row":
            vectors[row] = cells_to_vector(SCARF_CELLS)
    return vectors
