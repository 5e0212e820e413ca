"""Where a gallery lives: a SQLite file, a PostgreSQL database, or a pgvector gallery searched in PostgreSQL.

- ``path/to/gallery.db``: a SQLite file (the embedded default);
- ``postgresql://...``: a database shared by replicas, each searching in its own memory;
- ``pgvector://...`` (otherwise a ``postgresql://`` URL): searched inside the database with pgvector;
- ``pgvector+embedded:///path/to/dir``: the same, in a PostgreSQL server kept in that folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from pdsn.runtime.gallery.records import GalleryStore

_DATABASE_SCHEMES = re.compile(r"^(postgres|postgresql|pgvector|pgvector\+embedded)://")
_VECTOR_SCHEMES = re.compile(r"^pgvector(\+embedded)?://")
EMBEDDED_PREFIX = "pgvector+embedded://"


def is_database_url(location: object) -> bool:
    """Whether ``location`` names a database (PostgreSQL, with or without pgvector) rather than a SQLite file."""
    return isinstance(location, str) and _DATABASE_SCHEMES.match(location) is not None


def is_vector_location(location: object) -> bool:
    """Whether ``location`` names a gallery searched inside PostgreSQL with pgvector."""
    return isinstance(location, str) and _VECTOR_SCHEMES.match(location) is not None


def open_store(location: str | Path, create: bool) -> GalleryStore:
    """The store at ``location``: pgvector, PostgreSQL or SQLite, by its form."""
    if is_vector_location(location):
        from pdsn.runtime.gallery.pgvector_store import PgvectorStore

        return PgvectorStore(connection_url(str(location)), create, shown_location(location))
    if is_database_url(location):
        from pdsn.runtime.gallery.postgres_store import PostgresStore

        return PostgresStore(str(location), create)
    from pdsn.runtime.gallery.sqlite_store import SqliteStore

    return SqliteStore(location, create)


def connection_url(location: str) -> str:
    """The ``postgresql://`` URL a pgvector location connects to (starting its embedded server if need be)."""
    if location.startswith(EMBEDDED_PREFIX):
        from pdsn.runtime.gallery.embedded_server import embedded_server_url

        return embedded_server_url(location[len(EMBEDDED_PREFIX) :])
    return "postgresql://" + location.split("://", 1)[1]


def shown_location(location: str | Path) -> str:
    """``location`` as messages show it: a database URL without its password."""
    if is_database_url(location):
        from pdsn.runtime.gallery.postgres_store import redacted

        return redacted(str(location))
    return str(location)
