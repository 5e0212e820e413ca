"""The root of the errors pdsn raises on purpose, and the input error that names its field.

``PdsnError`` is what a user can cause and fix: a bad value or file, a missed gate, a backend not
installed, a gallery of another model. The CLI prints such an error as one line and the service
answers it with a status; anything else is a bug and keeps its traceback. ``InputError`` (and
``InputTypeError`` for a value of the wrong type) carries the argument at fault as ``field``, as the
caller wrote it (``threshold``, ``images[1]``), so the service names it without reading the message.
The built-in base of each (``ValueError``, ``RuntimeError``, ...) is kept, so ``except ValueError``
still catches what it caught before.
"""

from __future__ import annotations


class PdsnError(Exception):
    """An error pdsn raises on purpose: its message says what was given, what was expected, and how to fix it."""


class InputError(PdsnError, ValueError):
    """A value that is not what pdsn takes; ``field`` names the argument it was given as."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class InputTypeError(InputError, TypeError):
    """A value of a type pdsn does not take (a string for a number, a float for a count)."""
