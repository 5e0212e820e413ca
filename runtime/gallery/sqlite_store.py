"""The embedded gallery store: one SQLite file, the system of record for enrolled faces.

WAL journaling lets several processes open one gallery: readers never block, writers take turns
(a writer waits up to ``busy_timeout`` for another, then fails with a clear error). Each store reads
through a connection of its own, so its reads never wait behind its own writes either. Every
enrollment is one transaction, committed with ``synchronous=FULL`` before it is acknowledged, so a
killed process leaves every acknowledged identity whole and no identity half-enrolled. Each
face's arrays carry a CRC-32 that is checked when they are read back.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pdsn.runtime.gallery.records import (
    GALLERY_FORMAT,
    LOAD_CHUNK,
    DamagedFace,
    DuplicateIdentityError,
    FaceRecord,
    GalleryError,
    NoGalleryError,
    UnknownIdentityError,
    decoded_rows,
    encode_face,
)

BUSY_TIMEOUT_MS = 10_000
SQLITE_HEADER = b"SQLite format 3\x00"
OWN_TABLES = {"meta", "identities", "faces", "sqlite_sequence", "sqlite_stat1"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    cells INTEGER NOT NULL,
    base BLOB NOT NULL,
    features BLOB,
    feature_dtype TEXT,
    patterns TEXT NOT NULL,
    pattern_blob BLOB,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_by_identity ON faces(identity_id);
"""


def _not_a_gallery(path: Path) -> str | None:
    """What ``path`` holds when it is neither missing nor one of our galleries, read without changing it."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "an empty (0-byte) file"
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return "a file that is not an SQLite database"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            marker = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() if "meta" in tables else None
    except sqlite3.DatabaseError as exc:
        return f"an SQLite database that cannot be read ({exc})"
    if tables - OWN_TABLES or not {"meta", "identities", "faces"} <= tables:
        return f"another application's SQLite database (tables: {', '.join(sorted(tables)) or 'none'})"
    if marker is not None and marker[0] != GALLERY_FORMAT:
        return f"an SQLite database marked {marker[0]!r}"
    return None


_FACE_QUERY = (
    "SELECT f.id, i.name, f.cells, f.base, f.features, f.feature_dtype, f.patterns, f.pattern_blob, f.crc"
    " FROM faces f JOIN identities i ON i.id = f.identity_id"
)


class SqliteStore:
    """Faces and identities in one SQLite file; safe to share between threads and processes."""

    pattern_dtype = "float32"  # the precision a read-back pattern embedding keeps

    def __init__(self, path: str | Path, create: bool) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise NoGalleryError(f"gallery {self.path} does not exist; create it with Gallery.create or create=True")
        if self.path.exists() and not self.path.is_file():
            raise GalleryError(f"gallery {self.path} is not a file")
        if not self.path.parent.is_dir():
            raise GalleryError(f"gallery {self.path}: the folder {self.path.parent} does not exist")
        if (found := _not_a_gallery(self.path)) is not None:
            raise GalleryError(
                f"gallery {self.path} is {found}, not a pdsn gallery; it was left untouched. Point --gallery at a "
                f"gallery file or at a path where none exists yet (a new gallery is created there)"
            )
        self._lock = threading.RLock()  # the writing connection's
        self._read_lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            with self._db:
                self._db.executescript(_SCHEMA)
            # Reads have a connection of their own: in WAL mode they never wait for a writer (this process's,
            # waiting for another's lock, or another process's).
            self._reader = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(
                f"gallery {self.path} is not a readable SQLite gallery ({exc}); restore it from a backup or re-enroll"
            ) from None
        self._version = self._data_version()

    @property
    def location(self) -> str:
        return str(self.path)

    def read_meta(self) -> dict[str, str]:
        with self._read_lock, self._errors("read"):
            return dict(self._reader.execute("SELECT key, value FROM meta").fetchall())

    def write_meta(self, values: dict[str, str]) -> None:
        """Record the gallery's format and fingerprint at creation; keys already recorded are kept."""
        with self._lock, self._errors("write"), self._db:
            self._db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", sorted(values.items()))

    def add_identities(
        self, people: Sequence[tuple[str, dict, Sequence[FaceRecord]]], replace: bool
    ) -> list[list[int]]:
        """Enroll every (name, metadata, faces) in one transaction: all or none; returns their face ids.

        The transaction takes the write lock before it looks a name up, so two processes enrolling the same
        new name at once are one after the other: the second finds the first's and is refused as a duplicate.
        """
        with self._lock, self._errors("enroll"), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return [self._insert(name, metadata, faces, replace) for name, metadata, faces in people]

    def _insert(self, name: str, metadata: dict, faces: Sequence[FaceRecord], replace: bool) -> list[int]:
        row = self._db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        if row is not None and not replace:
            raise DuplicateIdentityError(
                f"identity {name!r} is already enrolled in {self.path}; pass replace=True to replace its faces"
            )
        if row is not None:
            self._db.execute("DELETE FROM identities WHERE id = ?", (row[0],))
        cursor = self._db.execute(
            "INSERT INTO identities (name, metadata, created) VALUES (?, ?, ?)",
            (name, json.dumps(metadata, sort_keys=True), time.time()),
        )
        identity_id = cursor.lastrowid
        ids = []
        for face in faces:
            cursor = self._db.execute(
                "INSERT INTO faces (identity_id, cells, base, features, feature_dtype, patterns, pattern_blob, crc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (identity_id, *encode_face(face)),
            )
            assert cursor.lastrowid is not None  # an INSERT sets it
            ids.append(int(cursor.lastrowid))
        return ids

    def remove_identity(self, name: str) -> None:
        with self._lock, self._errors("remove"), self._db:
            if self._db.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownIdentityError(f"identity {name!r} is not enrolled in {self.path}")

    def metadata(self, name: str) -> dict:
        with self._read_lock, self._errors("read"):
            row = self._reader.execute("SELECT metadata FROM identities WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownIdentityError(f"identity {name!r} is not enrolled in {self.path}")
        return json.loads(row[0])

    def identities(self, offset: int = 0, limit: int | None = None) -> list[str]:
        with self._read_lock, self._errors("read"):
            rows = self._reader.execute(
                "SELECT name FROM identities ORDER BY name LIMIT ? OFFSET ?", (-1 if limit is None else limit, offset)
            ).fetchall()
        return [name for (name,) in rows]

    def count(self) -> int:
        with self._read_lock, self._errors("read"):
            return int(self._reader.execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    def contains(self, name: str) -> bool:
        with self._read_lock, self._errors("read"):
            return self._reader.execute("SELECT 1 FROM identities WHERE name = ?", (name,)).fetchone() is not None

    def face_ids(self) -> set[int]:
        with self._read_lock, self._errors("read"):
            return {face_id for (face_id,) in self._reader.execute("SELECT id FROM faces")}

    def group_sizes(self) -> dict[int, int]:
        """Faces per occluded-cells value."""
        with self._read_lock, self._errors("read"):
            return dict(self._reader.execute("SELECT cells, COUNT(*) FROM faces GROUP BY cells").fetchall())

    def faces_of(
        self, names: Sequence[str], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        """The faces of the identities ``names``, in face id order per chunk of names."""
        for start in range(0, len(names), 900):
            chunk = list(names[start : start + 900])
            with self._read_lock, self._errors("read"):
                rows = self._reader.execute(
                    _FACE_QUERY + f" WHERE i.name IN ({','.join('?' * len(chunk))}) ORDER BY f.id", chunk
                ).fetchall()
            yield from decoded_rows(self.path, rows, embedding_size, damaged)

    def faces(
        self, ids: Sequence[int] | None = None, embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        """Every face (or those of ``ids``), each checked against its CRC-32 (``decoded_rows``), read
        ``LOAD_CHUNK`` at a time: the rows in flight stay small however large the gallery."""
        query = _FACE_QUERY
        if ids is None:
            last = 0
            while True:
                with self._read_lock, self._errors("read"):
                    rows = self._reader.execute(
                        query + " WHERE f.id > ? ORDER BY f.id LIMIT ?", (last, LOAD_CHUNK)
                    ).fetchall()
                if not rows:
                    return
                yield from decoded_rows(self.path, rows, embedding_size, damaged)
                last = rows[-1][0]
        wanted = sorted(ids)
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            with self._read_lock, self._errors("read"):
                rows = self._reader.execute(
                    query + f" WHERE f.id IN ({','.join('?' * len(chunk))}) ORDER BY f.id", chunk
                ).fetchall()
            yield from decoded_rows(self.path, rows, embedding_size, damaged)

    def remove_faces(self, face_ids: Sequence[int]) -> list[str]:
        """Remove faces by id in one transaction, and the identities left without a face; returns those."""
        with self._lock, self._errors("remove faces"), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            owners = set()
            for face_id in face_ids:
                row = self._db.execute("DELETE FROM faces WHERE id = ? RETURNING identity_id", (face_id,)).fetchone()
                if row is not None:
                    owners.add(row[0])
            emptied = []
            for owner in sorted(owners):
                if self._db.execute("SELECT 1 FROM faces WHERE identity_id = ? LIMIT 1", (owner,)).fetchone() is None:
                    (name,) = self._db.execute(
                        "DELETE FROM identities WHERE id = ? RETURNING name", (owner,)
                    ).fetchone()
                    emptied.append(name)
            return emptied

    def changed(self) -> bool:
        """Whether the gallery was written (by this store or another process) since the last call."""
        with self._read_lock, self._errors("read"):
            version = self._data_version()
            changed, self._version = version != self._version, version
            return changed

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def _data_version(self) -> int:
        return int(self._reader.execute("PRAGMA data_version").fetchone()[0])

    def _errors(self, action: str):
        return _StoreErrors(self.path, action)


class _StoreErrors:
    """Turns SQLite's errors into GalleryError naming the file and what to do."""

    def __init__(self, path: Path, action: str) -> None:
        self._path, self._action = path, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> None:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise GalleryError(
                f"gallery {self._path} is busy: another process held its write lock for over "
                f"{BUSY_TIMEOUT_MS / 1000:.0f} s; retry the {self._action}"
            ) from None
        if isinstance(exc, sqlite3.DatabaseError):
            raise GalleryError(
                f"gallery {self._path} could not {self._action}: {exc}; if the file is damaged, restore it from "
                f"a backup or re-enroll into a new gallery"
            ) from None
