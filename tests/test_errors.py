"""Errors are types: every error pdsn raises on purpose is a PdsnError, and input errors carry their field.

The CLI prints a PdsnError as one line (exit 2) and lets anything else keep its traceback; the service
names the field of an InputError from the error itself, not from its message.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import numpy as np
import pytest

from pdsn.errors import InputError, InputTypeError, PdsnError

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_ERRORS = {
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), BaseException)
}


def _product_files():
    for path in sorted(ROOT.rglob("*.py")):
        first = path.relative_to(ROOT).parts[0]
        if first not in {"tests", "build", "dist", "scripts"} and not first.startswith("."):
            yield path


def test_every_error_class_of_the_product_is_a_pdsn_error():
    """A class deriving from built-in exceptions only must list PdsnError (or another pdsn error) among its bases."""
    strays = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_") or node.name == "PdsnError":
                continue
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
            if bases and all(base in BUILTIN_ERRORS for base in bases):
                strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}{tuple(bases)}")
    assert not strays, "error classes outside PdsnError:\n" + "\n".join(strays)


def test_input_checks_raise_input_errors_naming_their_field():
    from pdsn.model.occlusion import Occlusion
    from pdsn.model.validation import check_int, check_real
    from pdsn.runtime.gallery.names import checked_identity
    from pdsn.runtime.inputs import prepare_occlusion

    cases = [
        (lambda: check_int(1.5, "max_batch", 1), InputTypeError, "max_batch"),
        (lambda: check_int(0, "max_batch", 1), InputError, "max_batch"),
        (lambda: check_real("high", "threshold", -1.0, 1.0), InputTypeError, "threshold"),
        (lambda: check_real(2.0, "threshold", -1.0, 1.0), InputError, "threshold"),
        (lambda: Occlusion.from_cells([3, 3], "occlusion_b"), InputError, "occlusion_b"),
        (lambda: Occlusion.from_bits(1 << 25), InputError, "occlusion"),
        (lambda: prepare_occlusion([3, 99], 1), InputError, "occlusion[1]"),
        (lambda: prepare_occlusion(np.zeros((2, 25)), 3), InputError, "occlusion"),
        (lambda: checked_identity(""), InputError, "identity"),
    ]
    for call, kind, field in cases:
        with pytest.raises(kind) as caught:
            call()
        assert caught.value.field == field and str(caught.value).startswith(field)
        assert isinstance(caught.value, PdsnError) and isinstance(
            caught.value, ValueError
        )  # old handlers still catch it


def test_the_cli_treats_pdsn_errors_as_the_users_and_anything_else_as_a_bug():
    from pdsn.cli import _is_user_error
    from pdsn.runtime.gallery import GalleryError

    assert _is_user_error(GalleryError("gallery x: another model"))
    assert _is_user_error(InputError("k", "k must be >= 1"))
    assert not _is_user_error(RuntimeError("a bug"))
    assert not _is_user_error(TypeError("a bug's TypeError"))


def test_the_service_takes_the_field_from_the_error_not_its_message():
    pytest.importorskip("fastapi")
    from pdsn.serve.errors import ApiError, input_errors

    with pytest.raises(ApiError) as caught, input_errors("occlusion", "k", "threshold"):
        raise InputError("threshold", "must be a finite cosine score in [-1, 1], got nan")
    assert caught.value.field == "threshold" and caught.value.status == 422
    assert caught.value.message == "threshold: must be a finite cosine score in [-1, 1], got nan"
    with pytest.raises(ApiError) as caught, input_errors("occlusion", "k"):
        raise InputError("occlusion[2]", "occlusion[2] is 31, expected a cell id in 0..24")
    assert caught.value.field == "occlusion[2]"
