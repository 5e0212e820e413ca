"""Input checks shared across the package (numpy only): every boundary turns what it is given into checked
values with these, and errors name the field."""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload

import numpy as np

from pdsn.errors import InputError, InputTypeError


@overload
def check_int(value: object, argument: str, minimum: int, optional: Literal[False] = False) -> int: ...


@overload
def check_int(value: object, argument: str, minimum: int, optional: bool) -> int | None: ...


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


def check_real(
    value: object,
    argument: str,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    optional: bool = False,
    unit: str = "",
) -> float | None:
    """``value`` as a finite float in [low, high] (low excluded with ``low_open``; None passes when ``optional``);
    an InputTypeError for anything that is not a real number, an InputError out of range, ``argument`` the field."""
    bounds = f"{'>' if low_open else '>='} {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
    expected = f"{'None or ' if optional else ''}a finite number{f' of {unit}' if unit else ''} {bounds}"
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(argument, f"{argument} must be {expected}, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not (math.isfinite(number) and (low < number if low_open else low <= number) and number <= high):
        raise InputError(argument, f"{argument} must be {expected}, got {value!r}")
    return number


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
