"""The gallery searched inside PostgreSQL: every face's warm-pattern embeddings as pgvector ``halfvec``.

Beside the faces and identities of ``PostgresStore`` (trunk features kept for exact re-scoring),
``pdsn_face_vectors`` holds one normalised embedding per face and warm pattern, under the union of
that pattern and the face's own cells, with one HNSW index (inner product) per warm pattern: a
partial index ``WHERE warm = i``. ``pdsn_warm_patterns`` lists the warm patterns (a pattern added
later is searched once every face has it: ``complete``), ``pdsn_groups`` the faces per own-cells
value (kept by triggers), so a search knows its groups without scanning the faces. An enrollment
writes its faces and all their embeddings in one transaction; a replica holds no faces in memory,
so it sees other replicas' writes on its next query and needs no notifications.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdsn.runtime.gallery.embedded_server import INSTALL_HINT
from pdsn.runtime.gallery.postgres_store import CONNECT_TIMEOUT_S, FACE_COLUMNS, FACES_QUERY, PostgresStore
from pdsn.runtime.gallery.records import LOAD_CHUNK, DamagedFace, FaceRecord, GalleryError, decoded_rows

# HNSW build settings (pgvector's defaults), and the candidates a search walks by default.
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
DEFAULT_EF_SEARCH = 100
# The most memory a graph is built in unless the caller says otherwise: the build is sized to its graph (a graph
# larger than its memory builds many times more slowly), never past this, so it cannot exhaust the server.
BUILD_MEMORY_CAP_MB = 4096
# Connections a store searches over at once (each search takes one; more searches wait for one).
SEARCH_CONNECTIONS = 8
# A group smaller than this is scanned exactly (a filtered HNSW walk finds few of a small group's faces).
EXACT_BELOW = 5000
_BUILDS_TABLE = """CREATE TABLE IF NOT EXISTS pdsn_index_builds (
    warm SMALLINT PRIMARY KEY,
    m INTEGER NOT NULL,
    ef_construction INTEGER NOT NULL,
    faces BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    memory_mb INTEGER NOT NULL,
    spilled BOOLEAN NOT NULL
);"""
_VECTOR_LOCK = 0x70647376  # pg_advisory_xact_lock key for creating the vector tables

_VECTOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS pdsn_warm_patterns (
    warm SMALLINT PRIMARY KEY,
    pattern INTEGER NOT NULL UNIQUE,
    complete BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS pdsn_face_vectors (
    face_id BIGINT NOT NULL REFERENCES pdsn_faces(id) ON DELETE CASCADE,
    warm SMALLINT NOT NULL,
    identity_id BIGINT NOT NULL,
    cells INTEGER NOT NULL,
    embedding halfvec({dimension}) NOT NULL,
    PRIMARY KEY (face_id, warm)
);
CREATE INDEX IF NOT EXISTS pdsn_face_vectors_by_group ON pdsn_face_vectors (cells, warm);
CREATE TABLE IF NOT EXISTS pdsn_groups (cells INTEGER PRIMARY KEY, faces BIGINT NOT NULL);
{builds}
CREATE OR REPLACE FUNCTION pdsn_count_groups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pdsn_groups (cells, faces) SELECT cells, COUNT(*) FROM added GROUP BY cells
        ON CONFLICT (cells) DO UPDATE SET faces = pdsn_groups.faces + EXCLUDED.faces;
    ELSE
        UPDATE pdsn_groups g SET faces = g.faces - r.n
        FROM (SELECT cells, COUNT(*) AS n FROM removed GROUP BY cells) r WHERE g.cells = r.cells;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS pdsn_faces_added ON pdsn_faces;
DROP TRIGGER IF EXISTS pdsn_faces_removed ON pdsn_faces;
CREATE TRIGGER pdsn_faces_added AFTER INSERT ON pdsn_faces REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pdsn_count_groups();
CREATE TRIGGER pdsn_faces_removed AFTER DELETE ON pdsn_faces REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pdsn_count_groups();
"""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmPattern:
    warm: int  # its number in the store: the partial index's predicate
    pattern: int  # the cells it masks (a 25-bit mask); a face's embedding is under this | its own cells
    complete: bool  # every face has its embedding: searchable


@dataclass(frozen=True)
class IndexBuild:
    """How a warm pattern's HNSW graph was built in one go (by a bulk load or a migration)."""

    warm: int
    m: int
    ef_construction: int
    faces: int
    seconds: float
    memory_mb: int  # maintenance_work_mem it was built with
    spilled: bool  # the graph outgrew that memory and was finished on disk, far more slowly


@dataclass(frozen=True)
class SearchPlan:
    """What one search needs to know, read in one query: the warm patterns and the groups' sizes."""

    warm: tuple[WarmPattern, ...]
    groups: dict[int, int]  # own cells -> faces


@dataclass
class _SearchConnection:
    """A search connection and whether it walks HNSW indexes with pgvector's iterative scan (set per session)."""

    db: Any
    iterative: bool = False


@dataclass(frozen=True)
class Hit:
    face_id: int
    identity: str
    score: float  # inner product of the normalised embeddings, as stored (half precision)


@dataclass(frozen=True, eq=False)
class SearchRequest:
    """One group's search (``PgvectorStore.search``'s arguments): ``limit`` faces of group ``cells`` nearest
    ``probe`` under warm pattern ``warm``, the best ``scored`` with their stored faces."""

    warm: int
    cells: int
    probe: np.ndarray
    limit: int
    exact: bool
    scored: int = 0
    other_groups: bool = True


def _pgvector():
    try:
        from pgvector import HalfVector
        from pgvector.psycopg import register_vector
    except ImportError as exc:
        raise GalleryError(f"a pgvector gallery needs the pgvector package: {INSTALL_HINT}") from exc
    return HalfVector, register_vector


class PgvectorStore(PostgresStore):
    """Faces in PostgreSQL, searched there: HNSW per warm pattern, exact scans for small groups."""

    listens = False
    pattern_dtype = "float16"

    def __init__(self, url: str, create: bool, shown: str | None = None, ef_search: int = DEFAULT_EF_SEARCH) -> None:
        self._halfvec, self._register = _pgvector()
        self.ef_search = ef_search
        self._vectors_ready = False
        # Searches run on their own connections, several at once; writes and the rest share the main one.
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._search_slots = threading.BoundedSemaphore(SEARCH_CONNECTIONS)
        super().__init__(url, create, shown)

    def set_ef_search(self, ef_search: int) -> None:
        """Walk ``ef_search`` candidates per HNSW search from now on (more: better recall, slower searches)."""
        self.ef_search = ef_search
        while not self._idle.empty():  # idle search connections are re-made with the new setting
            self._idle.get_nowait().db.close()

    def _check_kind(self, db) -> None:
        """The database must offer pgvector; an existing gallery must be one searched here."""
        try:
            db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except self._psycopg.Error as exc:
            raise GalleryError(
                f"gallery {self.location}: the database has no pgvector ({str(exc).strip().splitlines()[0]}). "
                "Install pgvector on the server (Debian/Ubuntu: postgresql-NN-pgvector) and run CREATE EXTENSION "
                "vector as its owner, or keep the gallery in an embedded server: pgvector+embedded:///path/to/dir"
            ) from None
        self._register(db)
        meta = db.execute("SELECT key, value FROM pdsn_gallery_meta").fetchall()
        has_vectors = db.execute("SELECT to_regclass('pdsn_face_vectors') IS NOT NULL").fetchone()[0]
        if meta and not has_vectors:
            raise GalleryError(
                f"gallery {self.location} is searched in each replica's memory, not in the database; open it with "
                "the same URL starting postgresql://, or copy it into a new pgvector gallery with "
                "`pdsn gallery migrate`"
            )
        self._vectors_ready = bool(has_vectors)

    def _configure(self, db) -> None:
        if self._vectors_ready or db.execute("SELECT to_regclass('pdsn_face_vectors') IS NOT NULL").fetchone()[0]:
            self._register(db)
        db.execute(f"SET hnsw.ef_search = {int(self.ef_search)}")

    def write_meta(self, values: dict[str, str]) -> None:
        """Record the gallery, then make its vector tables for the embedding size and warm patterns recorded."""
        super().write_meta(values)
        meta = self.read_meta()
        if "fingerprint" in meta and "settings" in meta:
            dimension = int(json.loads(meta["fingerprint"])["embedding_size"])
            warm = [int(p) for p in json.loads(meta["settings"])["warm_patterns"]]
            self._create_vectors(dimension, warm)

    def _create_vectors(self, dimension: int, warm: list[int]) -> None:
        with self._lock, self._errors("create the vector tables"):
            db = self._connection()
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_VECTOR_LOCK,))
                if not db.execute("SELECT to_regclass('pdsn_face_vectors') IS NOT NULL").fetchone()[0]:
                    db.execute(_VECTOR_SCHEMA.format(dimension=int(dimension), builds=_BUILDS_TABLE))
                    for number, pattern in enumerate(warm):
                        db.execute(
                            "INSERT INTO pdsn_warm_patterns (warm, pattern, complete) VALUES (%s, %s, true)",
                            (number, pattern),
                        )
                        db.execute(_index_sql(number, concurrently=False))
            self._register(db)
            self._vectors_ready = True
        stored = self.dimension()
        if stored != dimension:
            raise GalleryError(
                f"gallery {self.location} stores {stored}-d embeddings, but this model's are {dimension}-d; open it "
                "with the model it was enrolled with, or enroll into a new gallery"
            )

    def dimension(self) -> int:
        """The stored embeddings' size, as the table's column type says."""
        with self._lock, self._errors("read"):
            return self.dimension_of(self._connection())

    @staticmethod
    def dimension_of(db) -> int:
        return int(
            db.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'pdsn_face_vectors'::regclass "
                "AND attname = 'embedding'"
            ).fetchone()[0]
        )

    # -- writes -----------------------------------------------------------------------------

    def _insert_people(self, db, people: Sequence[tuple[str, dict, Sequence[FaceRecord]]], replace: bool) -> list:
        """The faces without their embeddings, then the embeddings of every warm pattern, in the caller's
        transaction. The SHARE lock on the warm list keeps a warm pattern from being marked complete while
        an enrollment that does not have it is in flight (``complete_warm`` takes it EXCLUSIVE)."""
        db.execute("LOCK TABLE pdsn_warm_patterns IN SHARE MODE")
        warm = self._warm_list(db)
        bare = [
            (name, metadata, [dataclasses.replace(face, patterns={}) for face in faces])
            for name, metadata, faces in people
        ]
        ids = super()._insert_people(db, bare, replace)
        identity_of = dict(
            db.execute(
                "SELECT f.id, f.identity_id FROM pdsn_faces f WHERE f.id = ANY(%s)",
                ([face_id for group in ids for face_id in group],),
            ).fetchall()
        )
        rows, lacking = [], set()
        for (_, _, faces), face_ids in zip(people, ids):
            for face, face_id in zip(faces, face_ids):
                for entry in warm:
                    embedding = face.patterns.get(entry.pattern | face.cells)
                    if embedding is not None:
                        rows.append((face_id, entry.warm, identity_of[face_id], face.cells, embedding))
                    else:
                        lacking.add(entry.warm)
        # Faces copied in without a warm pattern's embedding (from a gallery that kept features only): that
        # pattern is not searched until ``Gallery.warm`` has filled them in.
        if lacking:
            db.execute("UPDATE pdsn_warm_patterns SET complete = false WHERE warm = ANY(%s)", (sorted(lacking),))
        self._copy_vectors(db, rows)
        return ids

    def _copy_vectors(self, db, rows: list[tuple]) -> None:
        if not rows:
            return
        with db.cursor().copy(
            "COPY pdsn_face_vectors (face_id, warm, identity_id, cells, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bigint", "smallint", "bigint", "integer", "halfvec"])
            for face_id, warm, identity_id, cells, embedding in rows:
                copy.write_row((face_id, warm, identity_id, cells, self._halfvec(np.asarray(embedding, np.float32))))

    def add_warm_pattern(self, pattern: int) -> WarmPattern:
        """List a new warm pattern, not searched until ``complete_warm``; adding one already listed returns it. Its
        graph is built once its embeddings are filled in (a graph maintained face by face while a large gallery
        is filled costs many times one build)."""
        with self._lock, self._errors("add a warm pattern"):
            db = self._connection()
            with db.transaction():
                db.execute("LOCK TABLE pdsn_warm_patterns IN EXCLUSIVE MODE")
                found = [entry for entry in self._warm_list(db) if entry.pattern == pattern]
                if found:
                    return found[0]
                number = db.execute("SELECT COALESCE(MAX(warm) + 1, 0) FROM pdsn_warm_patterns").fetchone()[0]
                db.execute(
                    "INSERT INTO pdsn_warm_patterns (warm, pattern, complete) VALUES (%s, %s, false)", (number, pattern)
                )
            return WarmPattern(int(number), pattern, False)

    def drop_indexes(self) -> None:
        """Drop the HNSW indexes for a bulk load (searches meanwhile scan exactly)."""
        with self._lock, self._errors("drop the HNSW indexes"):
            db = self._connection()
            db.execute(_BUILDS_TABLE)
            for entry in self._warm_list(db):
                db.execute(f"DROP INDEX IF EXISTS {_index_name(entry.warm)}")
                db.execute("DELETE FROM pdsn_index_builds WHERE warm = %s", (entry.warm,))

    def build_indexes(
        self,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        memory_cap_mb: int = BUILD_MEMORY_CAP_MB,
        only: frozenset[int] | None = None,
    ) -> list[IndexBuild]:
        """Build the HNSW graph of every warm pattern that lacks one (of those numbered ``only``, where given),
        ``m`` links per node built with ``ef_construction`` candidates, each in memory sized to its graph (at most
        ``memory_cap_mb``), one at a time; each build is recorded as it ends, so an interrupted run keeps the graphs
        already built."""
        built = []
        with self._lock, self._errors("build the HNSW indexes"):
            db = self._connection()
            db.execute(_BUILDS_TABLE)
            dimension = self.dimension_of(db)
            for entry in self._warm_list(db):
                if (only is not None and entry.warm not in only) or self._has_index(db, entry.warm):
                    continue
                faces = int(
                    db.execute("SELECT COUNT(*) FROM pdsn_face_vectors WHERE warm = %s", (entry.warm,)).fetchone()[0]
                )
                built.append(self._build_index(db, entry.warm, faces, dimension, m, ef_construction, memory_cap_mb))
            # Fresh statistics, so the planner walks the HNSW index for a large group rather than scanning it.
            db.execute("ANALYZE pdsn_face_vectors")
        return built

    def _build_index(
        self,
        db,
        warm: int,
        faces: int,
        dimension: int,
        m: int,
        ef_construction: int,
        memory_cap_mb: int,
        concurrently: bool = False,
    ) -> IndexBuild:
        needed_mb = graph_memory_mb(faces, m, dimension)
        memory_mb = min(needed_mb, memory_cap_mb)
        if needed_mb > memory_cap_mb:
            _log.warning(
                "gallery %s: the HNSW graph of warm pattern %d (%d faces, m %d) needs about %d MB to build in memory "
                "but may use %d MB, so it will build far more slowly; allow more build memory if the server has it",
                self.location,
                warm,
                faces,
                m,
                needed_mb,
                memory_cap_mb,
            )
        notices: list[str] = []

        def spilled(notice) -> None:
            if "no longer fits" in (notice.message_primary or ""):
                notices.append(notice.message_primary)

        db.add_notice_handler(spilled)
        db.execute("SELECT set_config('maintenance_work_mem', %s, false)", (f"{memory_mb}MB",))
        started = time.perf_counter()
        try:
            db.execute(_index_sql(warm, concurrently=concurrently, m=m, ef_construction=ef_construction))
        finally:
            db.execute("RESET maintenance_work_mem")
            db.remove_notice_handler(spilled)
        build = IndexBuild(warm, m, ef_construction, faces, time.perf_counter() - started, memory_mb, bool(notices))
        if build.spilled:
            _log.warning(
                "gallery %s: warm pattern %d: %s (built in %.0f s)", self.location, warm, notices[0], build.seconds
            )
        db.execute(
            "INSERT INTO pdsn_index_builds (warm, m, ef_construction, faces, seconds, memory_mb, spilled) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (warm) DO UPDATE SET m = EXCLUDED.m, ef_construction = "
            "EXCLUDED.ef_construction, faces = EXCLUDED.faces, seconds = EXCLUDED.seconds, memory_mb = "
            "EXCLUDED.memory_mb, spilled = EXCLUDED.spilled",
            dataclasses.astuple(build),
        )
        return build

    def index_builds(self) -> tuple[IndexBuild, ...]:
        """The recorded builds of the HNSW graphs the gallery holds now, by warm pattern."""
        with self._lock, self._errors("read"):
            db = self._connection()
            if not db.execute("SELECT to_regclass('pdsn_index_builds') IS NOT NULL").fetchone()[0]:
                return ()
            rows = db.execute(
                "SELECT warm, m, ef_construction, faces, seconds, memory_mb, spilled FROM pdsn_index_builds "
                "ORDER BY warm"
            ).fetchall()
            return tuple(
                IndexBuild(int(w), int(m), int(e), int(f), float(s), int(mb), bool(sp))
                for w, m, e, f, s, mb, sp in rows
                if db.execute("SELECT to_regclass(%s) IS NOT NULL", (_index_name(int(w)),)).fetchone()[0]
            )

    def faces_lacking(self, warm: int, after: int, limit: int) -> list[int]:
        """Face ids above ``after`` with no embedding under warm pattern ``warm``, in order."""
        with self._lock, self._errors("read"):
            return [
                int(face_id)
                for (face_id,) in self._read(
                    "SELECT f.id FROM pdsn_faces f WHERE f.id > %s AND NOT EXISTS (SELECT 1 FROM pdsn_face_vectors v "
                    "WHERE v.face_id = f.id AND v.warm = %s) ORDER BY f.id LIMIT %s",
                    (after, warm, limit),
                ).fetchall()
            ]

    def add_vectors(self, warm: int, faces: Sequence[FaceRecord], embeddings: np.ndarray) -> None:
        """Embeddings under warm pattern ``warm`` for faces that lack them, in one transaction (faces removed
        meanwhile are skipped, faces given one meanwhile keep theirs)."""
        with self._lock, self._errors("store warm embeddings", writing=True):
            db = self._connection()
            with db.transaction():
                present = dict(
                    db.execute(
                        "SELECT id, identity_id FROM pdsn_faces WHERE id = ANY(%s)", ([f.face_id for f in faces],)
                    ).fetchall()
                )
                done = {
                    face_id
                    for (face_id,) in db.execute(
                        "SELECT face_id FROM pdsn_face_vectors WHERE warm = %s AND face_id = ANY(%s)",
                        (warm, list(present)),
                    )
                }
                self._copy_vectors(
                    db,
                    [
                        (face.face_id, warm, present[face.face_id], face.cells, embedding)
                        for face, embedding in zip(faces, embeddings)
                        if face.face_id in present and face.face_id not in done
                    ],
                )

    def complete_warm(self, warm: int, memory_cap_mb: int = BUILD_MEMORY_CAP_MB) -> bool:
        """Mark warm pattern ``warm`` searchable if every face has it now (no enrollment in flight, by the
        EXCLUSIVE lock); False when some face still lacks it. A filled pattern without a graph first gets one,
        built without blocking writes, with the m and ef_construction recorded for another of its graphs
        (pgvector's defaults when none is)."""
        with self._lock, self._errors("complete a warm pattern", writing=True):
            db = self._connection()
            if self._lacking(db, warm):
                return False
            if not self._has_index(db, warm):
                db.execute(_BUILDS_TABLE)
                m, ef_construction = db.execute(
                    "SELECT m, ef_construction FROM pdsn_index_builds ORDER BY warm DESC LIMIT 1"
                ).fetchone() or (HNSW_M, HNSW_EF_CONSTRUCTION)
                faces = int(db.execute("SELECT COUNT(*) FROM pdsn_face_vectors WHERE warm = %s", (warm,)).fetchone()[0])
                self._build_index(
                    db, warm, faces, self.dimension_of(db), m, ef_construction, memory_cap_mb, concurrently=True
                )
            with db.transaction():
                db.execute("LOCK TABLE pdsn_warm_patterns IN EXCLUSIVE MODE")
                lacking = self._lacking(db, warm)
                if not lacking:
                    db.execute("UPDATE pdsn_warm_patterns SET complete = true WHERE warm = %s", (warm,))
                return not lacking

    @staticmethod
    def _lacking(db, warm: int) -> bool:
        return bool(
            db.execute(
                "SELECT EXISTS (SELECT 1 FROM pdsn_faces f WHERE NOT EXISTS (SELECT 1 FROM pdsn_face_vectors v "
                "WHERE v.face_id = f.id AND v.warm = %s))",
                (warm,),
            ).fetchone()[0]
        )

    @staticmethod
    def _has_index(db, warm: int) -> bool:
        """Whether warm pattern ``warm`` has a usable graph. A concurrent build that was interrupted leaves an
        invalid index, which the planner never uses: it is dropped, to be built again."""
        valid = db.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (_index_name(warm),)
        ).fetchone()
        if valid is not None and not valid[0]:
            db.execute(f"DROP INDEX IF EXISTS {_index_name(warm)}")
        return bool(valid and valid[0])

    # -- reads --------------------------------------------------------------------------------

    def plan(self) -> SearchPlan:
        """The warm patterns and the groups, in one round trip."""
        return _read_plan(self._search_query(_PLAN_QUERY)[0])

    def plan_and_search(
        self, requests: Sequence[SearchRequest], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> tuple[SearchPlan, list[tuple[list[Hit], dict[int, FaceRecord]]]]:
        """The plan, read first, and the ``requests``' searches after it, all in one round trip (pipelined on one
        connection): each as ``search`` returns it. The caller checks that the plan asks for the same searches."""
        rows, found = self._pipelined([(_PLAN_QUERY, ())], requests, embedding_size, damaged)
        return _read_plan(rows[0][0]), found

    def run_searches(
        self, requests: Sequence[SearchRequest], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> list[tuple[list[Hit], dict[int, FaceRecord]]]:
        """The ``requests``' searches (a probe's groups), in one round trip: each as ``search`` returns it."""
        return self._pipelined([], requests, embedding_size, damaged)[1]

    def _pipelined(
        self,
        leading: list[tuple[str, tuple | dict]],
        requests: Sequence[SearchRequest],
        embedding_size: int,
        damaged: list[DamagedFace] | None,
    ) -> tuple[list[list[tuple]], list[tuple[list[Hit], dict[int, FaceRecord]]]]:
        """The ``leading`` reads' rows and the ``requests``' searches after them, pipelined in one round trip."""
        statements = leading + [self._search_statement(r) for r in requests]
        rows = self._search_queries(statements, iterative=any(self._iterative(r) for r in requests))
        found = [self._search_result(result, embedding_size, damaged) for result in rows[len(leading) :]]
        return rows[: len(leading)], found

    def index_bytes(self) -> int:
        """The HNSW indexes' size on disk."""
        with self._lock, self._errors("read"):
            return int(
                self._read(
                    "SELECT COALESCE(SUM(pg_relation_size(indexrelid)), 0) FROM pg_index WHERE indrelid = "
                    "'pdsn_face_vectors'::regclass AND indexrelid::regclass::text LIKE 'pdsn_face_vectors_hnsw_%%'"
                ).fetchone()[0]
            )

    def setting(self, name: str) -> str:
        """A server setting as PostgreSQL shows it (``shared_buffers``: ``"6026MB"``)."""
        with self._lock, self._errors("read"):
            return str(self._read("SELECT current_setting(%s)", (name,)).fetchone()[0])

    def database_bytes(self) -> int:
        """The gallery database's size on disk (tables and indexes; the server's write-ahead log aside)."""
        with self._lock, self._errors("read"):
            return int(self._read("SELECT pg_database_size(current_database())").fetchone()[0])

    def warm_patterns(self) -> tuple[WarmPattern, ...]:
        with self._lock, self._errors("read"):
            return self._warm_list(self._connection())

    def search(
        self,
        warm: int,
        cells: int,
        probe: np.ndarray,
        limit: int,
        exact: bool,
        scored: int = 0,
        embedding_size: int = 0,
        damaged: list[DamagedFace] | None = None,
        other_groups: bool = True,
    ) -> tuple[list[Hit], dict[int, FaceRecord]]:
        """The ``limit`` faces of group ``cells`` nearest ``probe`` under warm pattern ``warm``: through its
        HNSW index, or ``exact`` by scanning the group (for small groups); best first. The best ``scored`` come
        with their stored faces (features and base embedding, for exact re-scoring), read in the same query.

        Where the index also holds ``other_groups``' faces (or more than ``ef_search`` faces are asked for) the
        walk goes on past its ``ef_search`` candidates until ``limit`` of the group's faces are found (pgvector's
        iterative scan); otherwise it stops there, which spares the scan's bookkeeping (about a tenth of a search
        at 100,000 faces)."""
        request = SearchRequest(warm, cells, probe, limit, exact, scored, other_groups)
        return self.run_searches([request], embedding_size, damaged)[0]

    def _iterative(self, request: SearchRequest) -> bool:
        return request.other_groups or request.limit > self.ef_search

    def _search_statement(self, request: SearchRequest) -> tuple[str, dict]:
        # The warm number is written into the query so the planner matches the partial index to it.
        distance = "(embedding <#> %(probe)s)" + (" + 0" if request.exact else "")
        query = (
            f"SELECT v.face_id, i.name, v.distance, {FACE_COLUMNS} FROM (SELECT c.*, row_number() OVER (ORDER BY "
            "c.distance, c.face_id) AS rank FROM (SELECT face_id, identity_id, embedding <#> %(probe)s AS distance "
            f"FROM pdsn_face_vectors WHERE warm = {int(request.warm)} AND cells = %(cells)s ORDER BY {distance} "
            "LIMIT %(limit)s) c) v JOIN pdsn_identities i ON i.id = v.identity_id LEFT JOIN pdsn_faces f ON f.id = "
            "v.face_id AND v.rank <= %(scored)s ORDER BY v.rank"
        )
        parameters = {
            "probe": self._halfvec(np.asarray(request.probe, np.float32)),
            "cells": request.cells,
            "limit": request.limit,
            "scored": request.scored,
        }
        return query, parameters

    def _search_result(
        self, rows: list[tuple], embedding_size: int, damaged: list[DamagedFace] | None
    ) -> tuple[list[Hit], dict[int, FaceRecord]]:
        hits = [Hit(int(row[0]), str(row[1]), -float(row[2])) for row in rows]
        stored = [row[3:] for row in rows if row[3] is not None]
        faces = {face.face_id: face for face in decoded_rows(self.location, stored, embedding_size, damaged)}
        return hits, faces

    def scoring_faces(self, ids: Sequence[int], embedding_size: int, damaged: list[DamagedFace]) -> list[FaceRecord]:
        """The faces ``ids`` with their features and base embeddings (no warm embeddings)."""
        rows = self._search_query(FACES_QUERY + " WHERE f.id = ANY(%s) ORDER BY f.id", (sorted(ids),))
        return list(decoded_rows(self.location, rows, embedding_size, damaged))

    def _search_query(self, query: str, parameters: tuple | dict = ()) -> list[tuple]:
        return self._search_queries([(query, parameters)], iterative=None)[0]

    def _search_queries(self, statements: list[tuple[str, tuple | dict]], iterative: bool | None) -> list[list[tuple]]:
        """Reads on a search connection (walking HNSW indexes ``iterative``-ly or not; None: reads no index, as
        the connection is), several pipelined in one round trip: tried again once on a fresh connection if it
        was lost."""
        with self._search_slots, self._errors("search"):
            for attempt in (1, 2):
                try:
                    with self._searching(fresh=attempt == 2, iterative=iterative) as db:
                        if len(statements) == 1:
                            return [db.execute(*statements[0]).fetchall()]
                        with db.pipeline():
                            cursors = [db.execute(query, parameters) for query, parameters in statements]
                        return [cursor.fetchall() for cursor in cursors]
                except self._psycopg.OperationalError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    @contextmanager
    def _searching(self, fresh: bool, iterative: bool | None) -> Iterator:
        """An idle search connection (or a new one) set to walk ``iterative``-ly, given back when the search is
        done, closed if it failed."""
        search = None
        if not fresh:
            with suppress(queue.Empty):
                search = self._idle.get_nowait()
        if search is None or search.db.closed or search.db.broken:
            search = _SearchConnection(
                self._psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            )
            self._configure(search.db)
        try:
            if iterative is not None and search.iterative != iterative:
                search.db.execute(f"SET hnsw.iterative_scan = {'relaxed_order' if iterative else 'off'}")
                search.iterative = iterative
            yield search.db
        except BaseException:
            search.db.close()
            raise
        self._idle.put(search)

    def close(self) -> None:
        super().close()
        while not self._idle.empty():
            self._idle.get_nowait().db.close()

    def faces(
        self, ids: Sequence[int] | None = None, embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        """As ``PostgresStore.faces``, each face with its warm embeddings (read back in half precision)."""
        chunk: list[FaceRecord] = []
        for record in super().faces(ids, embedding_size, damaged):
            chunk.append(record)
            if len(chunk) == LOAD_CHUNK:
                yield from self._with_vectors(chunk)
                chunk = []
        yield from self._with_vectors(chunk)

    def faces_of(
        self, names: Sequence[str], embedding_size: int = 0, damaged: list[DamagedFace] | None = None
    ) -> Iterator[FaceRecord]:
        yield from self._with_vectors(list(super().faces_of(names, embedding_size, damaged)))

    def _with_vectors(self, records: list[FaceRecord]) -> list[FaceRecord]:
        if not records:
            return records
        warm = {entry.warm: entry.pattern for entry in self.warm_patterns()}
        with self._lock, self._errors("read"):
            rows = self._read(
                "SELECT face_id, warm, embedding FROM pdsn_face_vectors WHERE face_id = ANY(%s)",
                ([r.face_id for r in records],),
            ).fetchall()
        by_face = {r.face_id: r for r in records}
        for face_id, number, embedding in rows:
            record = by_face[face_id]
            record.patterns[warm[number] | record.cells] = embedding.to_numpy().astype(np.float32)
        return records

    def _warm_list(self, db) -> tuple[WarmPattern, ...]:
        rows = db.execute("SELECT warm, pattern, complete FROM pdsn_warm_patterns ORDER BY warm").fetchall()
        return tuple(WarmPattern(int(w), int(p), bool(c)) for w, p, c in rows)


_PLAN_QUERY = (
    "SELECT (SELECT COALESCE(array_agg(ARRAY[warm, pattern, complete::int] ORDER BY warm), '{}') FROM "
    "pdsn_warm_patterns), (SELECT COALESCE(array_agg(ARRAY[cells, faces]), '{}') FROM pdsn_groups WHERE faces > 0)"
)


def _read_plan(row: tuple) -> SearchPlan:
    warm, groups = row
    return SearchPlan(
        tuple(WarmPattern(int(w), int(p), bool(c)) for w, p, c in warm),
        {int(cells): int(faces) for cells, faces in groups},
    )


def graph_memory_mb(faces: int, m: int, dimension: int) -> int:
    """Memory pgvector needs to hold the HNSW graph of ``faces`` half vectors while it builds it, with a margin.

    Per face: its element (about 150 bytes), 2m level-0 links of 16 bytes, the few upper levels' m links, and its
    ``dimension``-d half vector. Measured here (128-d): 970 bytes per face at m 16, 1,992 at m 48."""
    per_face = 160 + 32 * m + (24 + 16 * m) / (m - 1) + 8 + 2 * dimension
    return int(faces * per_face * 1.1 / 2**20) + 64


def _index_name(warm: int) -> str:
    return f"pdsn_face_vectors_hnsw_{int(warm)}"


def _index_sql(warm: int, concurrently: bool, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION) -> str:
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {_index_name(warm)} ON "
        f"pdsn_face_vectors USING hnsw (embedding halfvec_ip_ops) WITH (m = {int(m)}, ef_construction = "
        f"{int(ef_construction)}) WHERE warm = {int(warm)}"
    )
