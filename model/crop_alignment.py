"""The ways a face is cut from a photo by its five landmarks; a bundle's contract names one (numpy only).

- ``similarity-112x96``: the similarity transform that best maps the landmarks onto
  ``TEMPLATE_112X96``, resampled bilinearly into a 112x96 crop (the LResNet-IR models).
- ``dlib-chip-150``: dlib's 150x150 face chip (``pdsn.model.dlib_chip``): the same kind of fit onto
  ``TEMPLATE_DLIB_150``, cut with dlib's own resampling (dlib's face ResNet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdsn.model.alignment import TEMPLATE_112X96
from pdsn.model.dlib_chip import DLIB_CHIP_SIZE, TEMPLATE_DLIB_150

SIMILARITY_112X96 = "similarity-112x96"
DLIB_CHIP_150 = "dlib-chip-150"


@dataclass(frozen=True, eq=False)
class CropAlignment:
    """Where the five landmarks (eyes, nose, mouth corners; x, y) land in a crop of ``width`` x ``height``."""

    name: str
    width: int
    height: int
    template: np.ndarray


CROP_ALIGNMENTS: dict[str, CropAlignment] = {
    SIMILARITY_112X96: CropAlignment(SIMILARITY_112X96, 96, 112, TEMPLATE_112X96),
    DLIB_CHIP_150: CropAlignment(DLIB_CHIP_150, DLIB_CHIP_SIZE, DLIB_CHIP_SIZE, TEMPLATE_DLIB_150),
}
