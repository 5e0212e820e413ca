"""The shared gallery store: a PostgreSQL database, the system of record for many service replicas.

Each replica's ``Gallery`` keeps its own search data in memory (the per-pattern cache); the
database holds the enrolled faces. Every enrollment or removal is one transaction, acknowledged
only after its COMMIT returned, and it sends a NOTIFY on ``CHANNEL`` inside that transaction, so
PostgreSQL delivers it to every listening replica exactly when the change becomes visible. A
listener thread per store holds a ``LISTEN`` connection and marks the store changed; the Gallery
then diffs face ids with the database at its next identification. A lost connection fails the
call at hand with a ``GalleryError`` saying what is known about the write, and the next call
reconnects; a listener that lost its connection reconnects and marks the store changed, since
notifications may have been missed meanwhile.

Schema (created on first open, under an advisory lock so replicas starting together do not race):
``pdsn_gallery_meta``, ``pdsn_identities`` and ``pdsn_faces`` in the connection's schema (choose
one with ``?options=-csearch_path%3Dname`` to keep several galleries in one database).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pdsn.runtime.gallery.records import (
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

if TYPE_CHECKING:
    import psycopg

CHANNEL = "pdsn_gallery_changes"
CONNECT_TIMEOUT_S = 5
_INSTALL_HINT = 'pip install "pdsn-deploy[postgres]"'
_SCHEMA_LOCK = 0x70647362  # pg_advisory_xact_lock key for creating the tables
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pdsn_gallery_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pdsn_identities (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS pdsn_faces (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identity_id BIGINT NOT NULL REFERENCES pdsn_identities(id) ON DELETE CASCADE,
    cells INTEGER NOT NULL,
    base BYTEA NOT NULL,
    features BYTEA,
    feature_dtype TEXT,
    patterns TEXT NOT NULL,
    pattern_blob BYTEA,
    crc BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS pdsn_faces_by_identity ON pdsn_faces(identity_id);
"""
FACE_COLUMNS = "f.id, i.name, f.cells, f.base, f.features, f.feature_dtype, f.patterns, f.pattern_blob, f.crc"
# Faces with their identity names; a WHERE clause follows.
FACES_QUERY = f"SELECT {FACE_COLUMNS} FROM pdsn_faces f JOIN pdsn_identities i ON i.id = f.identity_id"


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    return re.sub(r"^(\w+://[^:/@]*):[^@]*@", r"\1:***@", url)


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise GalleryError(f"a PostgreSQL gallery needs psycopg 3: {_INSTALL_HINT}") from exc
    return psycopg


class PostgresStore:
    """Faces and identities in a PostgreSQL database; one connection per store, shared by its threads."""

    def __init__(self, url: str, create: bool, shown: str | None = None) -> None:
        self._psycopg = _psycopg()
        self._url = url
        self.location = shown or redacted(url)
        self._token = secrets.token_hex(8)  # this store's own notifications need no re-read
        self._lock = threading.RLock()
        self._db: psycopg.Connection | None = None
        self._stale = threading.Event()
        try:
            with self._lock, self._errors("open"):
                db = self._connection()
                exists = db.execute("SELECT to_regclass('pdsn_gallery_meta') IS NOT NULL").fetchone()[0]
                if not exists and not create:
                    raise NoGalleryError(
                        f"gallery {self.location}: the database holds no gallery; create one with Gallery.create "
                        "or create=True"
                    )
                if not exists:
                    with db.transaction():
                        db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        db.execute(_SCHEMA)
                self._check_kind(db)
        except BaseException:
            if self._db is not None:
                self._db.close()
            raise
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="pdsn-gallery-listen", daemon=True)
        if self.listens:
            self._listener.start()
            # Listen before the Gallery loads, so no change between its load and the first notification is missed.
            if not self._listening.wait(CONNECT_TIMEOUT_S + 1):
                self.close()
                raise GalleryError(f"gallery {self.location}: could not LISTEN for other replicas' changes")

    # Whether replicas hold faces in memory and must hear of each other's writes.
    listens = True
    # The precision a read-back pattern embedding keeps (migrations compare copies at it).
    pattern_dtype = "float32"

    def _check_kind(self, db) -> None:
        """A gallery searched inside the database (pgvector) is not opened as one searched in memory."""
        if db.execute("SELECT to_regclass('pdsn_face_vectors') IS NOT NULL").fetchone()[0]:
            raise GalleryError(
                f"gallery {self.location} is searched inside the database (pgvector); open it with the same URL "
                "starting pgvector:// instead of postgresql://"
            )

    def read_meta(self) -> dict[str, str]:
        with self._lock, self._errors("read"):
            return dict(self._read("SELECT key, value FROM pdsn_gallery_meta").fetchall())

    def write_meta(self, values: dict[str, str]) -> None:
        """Record the gallery's format and fingerprint at creation; keys already recorded are kept."""
        with self._lock, self._errors("write"):
            db = self._connection()
            with db.transaction():
                db.cursor().executemany(
                    "INSERT INTO pdsn_gallery_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                    sorted(values.items()),
                )

    def add_identities(
        self, people: Sequence[tuple[str, dict, Sequence[FaceRecord]]], replace: bool
    ) -> list[list[int]]:
        """Enroll every (name, metadata, faces) in one transaction: all or none; returns their face ids.

        Two replicas enrolling one new name at once: the second's insert meets the unique
        constraint; without ``replace`` that is a DuplicateIdentityError, with it the transaction is
        run again and replaces the first's faces.
        """
        for attempt in range(3):
            try:
                with self._lock, self._errors("enroll", writing=True):
                    db = self._connection()
                    with db.transaction():
                        ids = self._insert_people(db, people, replace)
                        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
                    return ids
            except self._psycopg.errors.UniqueViolation:
                if not replace or attempt == 2:
                    names = ", ".join(repr(name) for name, _, _ in people)
                    raise DuplicateIdentityError(
                        f"identity {names} was enrolled in {self.location} by another process meanwhile; pass "
                        "replace=True to replace its faces"
                    ) from None
        raise AssertionError("unreachable")

    def _insert_people(self, db, people: Sequence[tuple[str, dict, Sequence[FaceRecord]]], replace: bool) -> list:
        return [self._insert(db, name, metadata, faces, replace) for name, metadata, faces in people]

    def _insert(self, db, name: str, metadata: dict, faces: Sequence[FaceRecord], replace: bool) -> list[int]:
        row = db.execute("SELECT id FROM pdsn_identities WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is not None and not replace:
            raise DuplicateIdentityError(
                f"identity {name!r} is already enrolled in {self.location}; pass replace=True to replace its faces"
            )
        if row is not None:
            db.execute("DELETE FROM pdsn_identities WHERE id = %s", (row[0],))
        identity_id = db.execute(
            "INSERT INTO pdsn_identities (name, metadata, created) VALUES (%s, %s, %s) RETURNING id",
            (name, json.dumps(metadata, sort_keys=True), time.time()),
        ).fetchone()[0]
        ids = []
        for face in faces:
            face_id = db.execute(
                "INSERT INTO pdsn_faces (identity_id, cells, base, features, feature_dtype, patterns, pattern_blob,"
                " crc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (identity_id, *encode_face(face)),
            ).fetchone()[0]
            ids.append(int(face_id))
        return ids

    def remove_identity(self, name: str) -> None:
        with self._lock, self._errors("remove", writing=True):
            db = self._connection()
            with db.transaction():
                if db.execute("DELETE FROM pdsn_identities WHERE name = %s", (name,)).rowcount == 0:
                    raise UnknownIdentityError(f"identity {name!r} is not enrolled in {self.location}")
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))

    def metadata(self, name: str) -> dict:
        with self._lock, self._errors("read"):
            row = self._read("SELECT metadata FROM pdsn_identities WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise UnknownIdentityError(f"identity {name!r} is not enrolled in {self.location}")
        return json.loads(row[0])

    def identities(self, offset: int = 0, limit: int | None = None) -> list[str]:
        with self._lock, self._errors("read"):
            rows = self._read(
                'SELECT name FROM pdsn_identities ORDER BY name COLLATE "C" LIMIT %s OFFSET %s', (limit, offset)
            ).fetchall()
        return [name for (name,) in rows]

    def count(self) -> int:
        with self._lock, self._errors("read"):
            return int(self._read("SELECT COUNT(*) FROM pdsn_identities").fetchone()[0])

    def contains(self, name: str) -> bool:
        with self._lock, self._errors("read"):
            return self._read("SELECT 1 FROM pdsn_identities WHERE name = %s", (name,)).fetchone() is not None

    def face_ids(self) -> set[int]:
        with self._lock, self._errors("read"):
            return {int(face_id) for (face_id,) in self._read("SELECT id FROM pdsn_faces")}

    def group_sizes(self) -> dict[int, int]:
        """Faces per occluded-cells value."""
        with self._lock, self._errors("read"):
            return {
                int(cells): int(count)
                for cells, count in self._read("SELECT cells, COUNT(*) FROM pdsn_faces GROUP BY cells").fetchall()
            }

    def faces_of(
        self, names: Sequence[str], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        """The faces of the identities ``names``, in face id order."""
        with self._lock, self._errors("read"):
            rows = self._read(FACES_QUERY + " WHERE i.name = ANY(%s) ORDER BY f.id", (list(names),)).fetchall()
        yield from decoded_rows(self.location, rows, embedding_size, damaged)

    def faces(
        self, ids: Sequence[int] | None = None, embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        """Every face (or those of ``ids``), each checked against its CRC-32 (``decoded_rows``), read
        ``LOAD_CHUNK`` at a time: the rows in flight stay small however large the gallery."""
        if ids is not None:
            with self._lock, self._errors("read"):
                rows = self._read(FACES_QUERY + " WHERE f.id = ANY(%s) ORDER BY f.id", (sorted(ids),)).fetchall()
            yield from decoded_rows(self.location, rows, embedding_size, damaged)
            return
        last = 0
        while True:
            with self._lock, self._errors("read"):
                rows = self._read(
                    FACES_QUERY + " WHERE f.id > %s ORDER BY f.id LIMIT %s", (last, LOAD_CHUNK)
                ).fetchall()
            if not rows:
                return
            yield from decoded_rows(self.location, rows, embedding_size, damaged)
            last = rows[-1][0]

    def remove_faces(self, face_ids: Sequence[int]) -> list[str]:
        """Remove faces by id in one transaction, and the identities left without a face; returns those."""
        with self._lock, self._errors("remove faces", writing=True):
            db = self._connection()
            with db.transaction():
                owners = {
                    row[0]
                    for row in db.execute(
                        "DELETE FROM pdsn_faces WHERE id = ANY(%s) RETURNING identity_id", (list(face_ids),)
                    )
                }
                emptied = [
                    row[0]
                    for row in db.execute(
                        "DELETE FROM pdsn_identities i WHERE i.id = ANY(%s) AND NOT EXISTS "
                        "(SELECT 1 FROM pdsn_faces f WHERE f.identity_id = i.id) RETURNING i.name",
                        (sorted(owners),),
                    )
                ]
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
            return sorted(emptied)

    def changed(self) -> bool:
        """Whether another store (replica) wrote since the last call, as its notifications say."""
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False

    def close(self) -> None:
        self._stopping.set()
        if self._listener.is_alive() and self._listener is not threading.current_thread():
            self._listener.join(2 * CONNECT_TIMEOUT_S)
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self):
        """The store's connection, (re)made when there is none, the last one broke, or the listener saw the
        server go away and come back (the old connection is then dead, though it does not know it yet)."""
        if self._db is None or self._db.closed or self._db.broken or self._stale.is_set():
            self._stale.clear()
            if self._db is not None:
                self._db.close()
            self._db = self._psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._configure(self._db)
        return self._db

    def _configure(self, db) -> None:
        """Set up a new connection (a subclass registers types or session settings here)."""

    def _read(self, query: str, parameters: tuple = ()):
        """A query that changes nothing: tried again once on a fresh connection if the connection was lost."""
        try:
            return self._connection().execute(query, parameters)
        except self._psycopg.OperationalError:
            if self._db is not None:
                self._db.close()
            return self._connection().execute(query, parameters)

    def _listen(self) -> None:
        """Mark the store changed on each other store's notification; reconnect when the connection drops."""
        first = True
        while not self._stopping.is_set():
            try:
                with self._psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        self._stale.set()
                        self._changed.set()  # notifications may have been lost while disconnected
                    first = False
                    self._listening.set()
                    while not self._stopping.is_set():
                        for note in db.notifies(timeout=0.25):
                            if note.payload != self._token:
                                self._changed.set()
            except self._psycopg.Error:
                self._stopping.wait(0.5)

    def _errors(self, action: str, writing: bool = False):
        return _StoreErrors(self, action, writing)


class _StoreErrors:
    """Turns psycopg's errors into GalleryError naming the database and what is known about the write."""

    def __init__(self, store: PostgresStore, action: str, writing: bool) -> None:
        self._store, self._action, self._writing = store, action, writing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> None:
        psycopg = self._store._psycopg
        if isinstance(exc, psycopg.errors.UniqueViolation) or not isinstance(exc, psycopg.Error):
            return
        where = self._store.location
        if isinstance(exc, psycopg.OperationalError):
            known = (
                " The change may or may not have been committed if the connection dropped during COMMIT; check "
                "with identities() before retrying."
                if self._writing
                else ""
            )
            raise GalleryError(
                f"gallery {where}: PostgreSQL is unreachable, so the {self._action} failed ({_first_line(exc)}).{known} "
                "The next call reconnects."
            ) from None
        raise GalleryError(f"gallery {where} could not {self._action}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
