"""Input checks shared by the numpy-only model modules."""

from __future__ import annotations

import numpy as np


def as_real_array(value: object, argument: str, expected: str) -> np.ndarray:
    """``np.asarray`` that accepts only booleans and real numbers and names ``argument`` otherwise."""
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{argument} must be {expected}, got a ragged sequence ({error})") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{argument} must be {expected} of booleans or real numbers, got dtype {array.dtype}")
    return array
