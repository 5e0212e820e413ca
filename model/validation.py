"""Input checks shared across the package (numpy only)."""

from __future__ import annotations

import numbers

import numpy as np

from pdsn.errors import InputError, InputTypeError


def check_int(value: object, argument: str, minimum: int, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (None passes when ``optional``); an InputTypeError for anything that is
    not an integer (bools, floats, strings) and an InputError below ``minimum``, each with ``argument`` as field."""
    expected = f"{'None or ' if optional else ''}an integer >= {minimum}"
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(argument, f"{argument} must be {expected}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise InputError(argument, f"{argument} must be {expected}, got {value!r}")
    return int(value)


def as_real_array(value: object, argument: str, expected: str) -> np.ndarray:
    """``np.asarray`` that accepts only booleans and real numbers and names ``argument`` otherwise."""
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise InputError(argument, f"{argument} must be {expected}, got a ragged sequence ({error})") from None
    if array.dtype.kind not in "biuf":
        raise InputTypeError(
            argument, f"{argument} must be {expected} of booleans or real numbers, got dtype {array.dtype}"
        )
    return array
