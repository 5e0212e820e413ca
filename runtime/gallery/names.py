"""Identity names: what a gallery accepts as the name of an enrolled person.

A name is shown to people (logs, dashboards, answers), so it must read as what it is: characters that
draw nothing or reorder text (control characters, format characters such as a zero-width space or a
right-to-left override, line and paragraph separators) are refused, as are names not in Unicode NFC
form, where two different code sequences would display as the same name.
"""

from __future__ import annotations

import unicodedata

from pdsn.errors import InputError

MAX_IDENTITY_LENGTH = 256
# Unicode general categories refused in names: controls, format characters, line and paragraph separators.
REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def checked_identity(identity: object) -> str:
    """``identity`` if it is a usable name; else a ValueError saying which character, where, is the problem."""
    if not isinstance(identity, str) or not identity.strip():
        raise InputError("identity", f"identity must be a non-empty string, got {identity!r}")
    if len(identity) > MAX_IDENTITY_LENGTH:
        raise InputError("identity", f"identity must be at most {MAX_IDENTITY_LENGTH} characters, got {len(identity)}")
    for position, character in enumerate(identity):
        category = unicodedata.category(character)
        if category in REFUSED_CATEGORIES:
            raise InputError(
                "identity",
                f"identity has {REFUSED_CATEGORIES[category]} U+{ord(character):04X} "
                f"({unicodedata.name(character, 'unnamed')}) at position {position}; names may hold only "
                f"characters that display as themselves",
            )
    if not unicodedata.is_normalized("NFC", identity):
        raise InputError(
            "identity",
            f"identity is not in Unicode NFC form (the same name can be written with other code points); send "
            f"{unicodedata.normalize('NFC', identity)!r}, its NFC form",
        )
    return identity


def stored_name(identity: object) -> str:
    """A name to look up (remove, metadata): any non-empty string, so a name enrolled before these rules
    can still be removed."""
    if not isinstance(identity, str) or not identity:
        raise InputError("identity", f"identity must be a non-empty string, got {identity!r}")
    return identity
