"""Where a gallery lives: a ``postgresql://`` URL (a database shared by replicas) or a SQLite file."""

from __future__ import annotations

import re
from pathlib import Path

from pdsn.runtime.gallery.records import GalleryStore

_DATABASE_SCHEMES = re.compile(r"^(postgres|postgresql)://")


def is_database_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and _DATABASE_SCHEMES.match(location) is not None


def open_store(location: str | Path, create: bool) -> GalleryStore:
    """A PostgreSQL store for a ``postgresql://`` URL, else the SQLite file at ``location``."""
    if is_database_url(location):
        from pdsn.runtime.gallery.postgres_store import PostgresStore

        return PostgresStore(str(location), create)
    from pdsn.runtime.gallery.sqlite_store import SqliteStore

    return SqliteStore(location, create)


def shown_location(location: str | Path) -> str:
    """``location`` as messages show it: a database URL without its password."""
    if is_database_url(location):
        from pdsn.runtime.gallery.postgres_store import redacted

        return redacted(str(location))
    return str(location)
