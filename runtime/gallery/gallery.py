"""``Gallery``: 1:N identification under the PDSN protocol — trunk once per face, head per pattern.

A probe with occluded cells P and a gallery face enrolled with cells G are compared as
``Recognizer.verify`` compares two faces: both masked by the union U = P ∪ G. The trunk runs once
per face at enrollment and its features are stored; the gallery's embeddings under U are the
folded head applied to the stored features (one matrix product over the kept or the discarded
columns), cached per pattern. Faces enrolled with the same cells form a group, so a probe needs one
union pattern per group.

With ``keep_features=False`` only the warm patterns' embeddings are stored; a probe whose union is
not among them is compared under the smallest stored pattern that covers it, and its matches say
so (``exact`` is False).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdsn.errors import InputError
from pdsn.model.folded_head import HeadSlice
from pdsn.model.occlusion import Occlusion
from pdsn.model.validation import check_int, check_real
from pdsn.runtime.detection import DetectedFace
from pdsn.runtime.gallery.ann import PatternIndex
from pdsn.runtime.gallery.locations import is_database_url, is_vector_location, open_store, shown_location
from pdsn.runtime.gallery.names import checked_identity, stored_name
from pdsn.runtime.gallery.patterns import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_WARM_PATTERNS,
    CacheStats,
    PatternBusyError,
    PatternCache,
    warm_pattern_masks,
)
from pdsn.runtime.gallery.records import (
    GALLERY_FORMAT,
    GALLERY_FORMAT_VERSION,
    LOAD_CHUNK,
    DamagedFace,
    FaceRecord,
    Fingerprint,
    GalleryError,
    GalleryStore,
    NoGalleryError,
    meta_values,
)
from pdsn.runtime.gallery.rows import Rows
from pdsn.runtime.inputs import prepare_occlusion
from pdsn.runtime.photos import DetectionSettings

FEATURE_DTYPES = ("float16", "float32")
logger = logging.getLogger("pdsn.gallery")
# Faces looked at per identity asked for: enough of a group's best to find k identities with several faces each.
CANDIDATES_PER_MATCH = 16
# Head weights gathered per pattern (up to 42 MB each for LResNet50E-IR), least recently used out beyond this.
SLICE_BUDGET_BYTES = 512 << 20
# New probe patterns computed at once, and waiting, per gallery (each a product over every face of a group).
PATTERN_WORKERS = 1
PATTERN_QUEUE = 64


@dataclass(frozen=True)
class Enrollment:
    """One identity for ``Gallery.enroll_batch``: its faces' trunk features and their own occlusion."""

    identity: str
    features: np.ndarray
    occlusion: object = None
    metadata: dict | None = None


@dataclass(frozen=True)
class Match:
    """One enrolled identity that matched, by its best-scoring face."""

    identity: str
    score: float
    face_id: int
    occluded_cells: list[int]  # the union of the probe's and the face's cells, which masked both
    exact: bool = True  # False: compared under a stored pattern that covers the union


@dataclass(frozen=True)
class Identification:
    matches: list[Match]
    occluded_cells: list[int]  # the probe's own cells
    image: int = 0  # which of the images given (``identify_many``)
    face: DetectedFace | None = None  # where the probe was found, when its image was a photo


@dataclass(frozen=True)
class GalleryStats:
    identities: int
    faces: int
    groups: int
    feature_bytes: int
    cache: CacheStats
    indexes: int = 0  # HNSW indexes held (``ann_min_faces``)
    index_bytes: int = 0
    damaged: int = 0  # faces left out because their stored arrays are damaged


@dataclass
class _PatternWork:
    """One group's embeddings under one pattern, to compute from rows ``have`` on, outside the search lock."""

    group: _Group
    union: int
    have: int
    features: np.ndarray
    base: np.ndarray
    removals: int
    rows: np.ndarray | None = None
    seconds: float = 0.0


@dataclass
class _Group:
    """Faces enrolled with the same occluded cells, row-aligned across every array."""

    cells: int
    base: Rows  # unmasked embeddings, float32
    face_ids: list[int] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    features: Rows | None = None  # trunk features, float16/float32; None without keep_features
    stored: dict[int, Rows] = field(default_factory=dict)  # pattern -> normalised embeddings (no features)
    removals: int = 0  # rows dropped so far: a pattern computed from older rows no longer lines up

    @property
    def kept_features(self) -> Rows:
        """The trunk features, which every new pattern is computed from: kept with ``keep_features`` only."""
        if self.features is None:
            raise GalleryError("this gallery keeps no trunk features, so it computes no new pattern")
        return self.features


class Gallery:
    """Enrolled identities with their faces' trunk features, searchable under any occlusion pattern."""

    def __init__(
        self,
        store: GalleryStore,
        recognizer,
        settings: dict,
        cache_bytes: int,
        ann_min_faces: int | None = None,
        slice_bytes: int = SLICE_BUDGET_BYTES,
        pattern_workers: int = PATTERN_WORKERS,
        pattern_queue: int = PATTERN_QUEUE,
    ) -> None:
        self._store = store
        self.ann_min_faces = ann_min_faces
        self._recognizer = recognizer
        self._head = recognizer.folded_head
        self.keep_features = bool(settings["keep_features"])
        self.feature_dtype = np.dtype(settings["feature_dtype"])
        self.warm_patterns = tuple(int(p) for p in settings["warm_patterns"])
        self._cache = PatternCache(cache_bytes)
        self._discard = 1.0 - recognizer.bundle.dictionary.reshape(len(recognizer.bundle.dictionary), -1)
        self._groups: dict[int, _Group] = {}
        self._face_ids: set[int] = set()  # every face held in memory, to diff against the store
        self._slices: OrderedDict[int, HeadSlice] = OrderedDict()
        self._slice_bytes = 0
        self.slice_budget = slice_bytes
        self._indexes: dict[tuple[int, int], PatternIndex] = {}  # (group cells, pattern) -> its HNSW index
        self.pattern_workers = pattern_workers
        self.pattern_queue = pattern_queue
        self._pattern_slots = threading.BoundedSemaphore(pattern_workers)
        self._queue_lock = threading.Lock()
        self._waiting = 0
        self._lock = threading.RLock()  # the in-memory search data
        self._write_lock = threading.Lock()  # writes to the store, one at a time
        self._closed = False
        # Faces whose stored arrays are damaged: left out of every search, reported, removed by ``repair``.
        self.damaged: list[DamagedFace] = []
        self._load(store.group_sizes(), store.faces(embedding_size=self._head.embedding_size, damaged=self.damaged))
        if self.damaged:
            logger.warning(
                "gallery %s: %d damaged face(s) left out (%s); `pdsn gallery check --repair` removes them",
                store.location,
                len(self.damaged),
                ", ".join(f"face {d.face_id} of {d.identity!r}" for d in self.damaged[:10]),
            )

    @classmethod
    def open(
        cls,
        location: str | Path,
        recognizer,
        *,
        create: bool = True,
        keep_features: bool = True,
        feature_dtype: str = "float16",
        warm_patterns: Sequence[Sequence[int]] = DEFAULT_WARM_PATTERNS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        ann_min_faces: int | None = None,
        slice_bytes: int = SLICE_BUDGET_BYTES,
        pattern_workers: int = PATTERN_WORKERS,
        pattern_queue: int = PATTERN_QUEUE,
        ef_search: int | None = None,
    ) -> Gallery:
        """Open the gallery at ``location``, creating it when ``create`` and absent.

        ``location``: a SQLite file (the embedded default), or a ``postgresql://`` URL whose database
        several processes and hosts share (the system of record; each Gallery holds its own
        in-memory search data and takes in the others' enrollments as PostgreSQL notifies them), or a
        pgvector gallery searched inside PostgreSQL, holding no faces in memory: ``pgvector://...`` (a
        PostgreSQL URL with pgvector) or ``pgvector+embedded:///path/to/dir`` (a server kept in that folder).
        A pgvector gallery always stores its warm patterns' embeddings; ``keep_features`` adds the trunk
        features, from which the candidates are scored exactly under the probe's union.

        ``keep_features``, ``feature_dtype`` and ``warm_patterns`` apply when the gallery is
        created; an existing gallery keeps its own. Opening a gallery enrolled with another model,
        dictionary or trunk precision is refused, saying which.

        ``ann_min_faces``: search the warm patterns of groups of at least this many faces through an
        HNSW index (usearch; built by ``warm``, about a minute per pattern at 100,000 faces), the
        candidates scored exactly; None (the default) searches every pattern exactly.

        ``cache_bytes``: the budget of the probe patterns' gallery embeddings kept; ``slice_bytes``: that of
        the head's weights gathered per pattern (least recently used out beyond either). A probe under a
        pattern not cached yet has its gallery embeddings computed outside the search lock, at most
        ``pattern_workers`` at once and ``pattern_queue`` waiting (``PatternBusyError`` beyond).

        ``ef_search`` (pgvector galleries only): candidates each HNSW search walks, default 100; more finds
        more of the exact top matches in large galleries, at a cost in time (``docs/pgvector.md`` measures it).
        """
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype {feature_dtype!r} is not one of {FEATURE_DTYPES}")
        if not isinstance(keep_features, bool):
            raise TypeError(f"keep_features must be True or False, got {keep_features!r}")
        if ann_min_faces is not None:
            ann_min_faces = check_int(ann_min_faces, "ann_min_faces", 1)
        cache_bytes = check_int(cache_bytes, "cache_bytes", 1)
        slice_bytes = check_int(slice_bytes, "slice_bytes", 1)
        pattern_workers = check_int(pattern_workers, "pattern_workers", 1)
        pattern_queue = check_int(pattern_queue, "pattern_queue", 0)
        if is_vector_location(location):
            from pdsn.runtime.gallery.vector_gallery import VectorGallery

            warm = warm_pattern_masks(warm_patterns)
            return VectorGallery.open_location(
                str(location), recognizer, create, keep_features, feature_dtype, warm, slice_bytes, ef_search
            )
        if ef_search is not None:
            raise InputError(
                "ef_search",
                f"ef_search applies to galleries searched with pgvector (pgvector://, pgvector+embedded://), not "
                f"to {shown_location(location)}; use ann_min_faces for HNSW search in memory",
            )
        store = open_store(location, create)
        try:
            settings = _bind(store, recognizer, keep_features, feature_dtype, warm_pattern_masks(warm_patterns))
            return cls(
                store, recognizer, settings, cache_bytes, ann_min_faces, slice_bytes, pattern_workers, pattern_queue
            )
        except BaseException:
            store.close()
            raise

    @classmethod
    def create(cls, location: str | Path, recognizer, **options) -> Gallery:
        """A new, empty gallery at ``location``; refused if one exists there."""
        if is_database_url(location):
            store = open_store(location, create=True)
            try:
                exists = bool(store.read_meta())
            finally:
                store.close()
        else:
            exists = Path(location).exists()
        if exists:
            raise GalleryError(
                f"gallery {shown_location(location)} already exists; open it with Gallery.open, or choose another location"
            )
        return cls.open(location, recognizer, create=True, **options)

    # -- enrollment ---------------------------------------------------------------------------

    def enroll(
        self,
        identity: str,
        images: object,
        occlusion: object = None,
        metadata: dict | None = None,
        replace: bool = False,
        landmarks: object = None,
        face: int | str | None = None,
        detection: DetectionSettings | None = None,
    ) -> list[int]:
        """Enroll one or more faces of ``identity`` in one transaction; returns their face ids.

        ``images``: aligned crops or photos as ``Recognizer.embed`` takes them (or photos with
        ``landmarks``). A photo gives one face: its only one (``face=None``; a photo with several is
        refused, saying how many), ``face="largest"``, or an index as ``Recognizer.detect`` lists them.
        ``occlusion``: the faces' own occluded cells, in any form ``embed`` accepts. An identity already
        enrolled is refused unless ``replace``, which swaps its faces atomically.
        """
        self._check_open()
        located = self._recognizer.locate(images, landmarks, detection, face)
        features = self._recognizer.features(located.batch)
        vectors = self._recognizer.occlusion_of(occlusion, located)
        return self.enroll_features(identity, features, vectors, metadata, replace)

    def enroll_features(
        self,
        identity: str,
        features: np.ndarray,
        occlusion: object = None,
        metadata: dict | None = None,
        replace: bool = False,
    ) -> list[int]:
        """``enroll`` from trunk features already computed (``Recognizer.features``), e.g. elsewhere."""
        return self.enroll_batch([Enrollment(identity, features, occlusion, metadata)], replace)[0]

    def enroll_batch(self, enrollments: Sequence[Enrollment], replace: bool = False) -> list[list[int]]:
        """Enroll many identities from their features in one transaction (all or none): bulk imports.

        The head's products for all their faces run as one matrix product, much faster per face than
        one call each. Returns each identity's face ids.
        """
        self._check_open()
        if not enrollments:
            return []
        names, people, records = self._records(enrollments)
        # The store commits outside the search lock (a write may wait for another process's), so searches
        # never wait on it; writes take turns, so the memory follows the store in commit order.
        with self._write_lock:
            ids = self._store.add_identities(people, replace)
            for face_id, record in zip((i for group in ids for i in group), records):
                record.face_id = face_id
            self._enrolled(set(names), records, replace)
        return ids

    def _records(self, enrollments: Sequence[Enrollment]) -> tuple[list[str], list, list[FaceRecord]]:
        """The identities' names, their (name, metadata, faces) for the store, and every face's record."""
        names = [checked_identity(e.identity) for e in enrollments]
        if len(set(names)) != len(names):
            raise ValueError(f"enroll_batch: identities repeat ({sorted(n for n in set(names) if names.count(n) > 1)})")
        metadata = [_metadata(e.metadata) for e in enrollments]
        blocks = [self._checked_features(e.features) for e in enrollments]
        cells = [[o.bits for o in prepare_occlusion(e.occlusion, len(f))] for e, f in zip(enrollments, blocks)]
        features = np.concatenate(blocks)
        base = self._head.embed(features)
        flat_cells = [c for group in cells for c in group]
        warm = self._warm_embeddings(features, flat_cells, base, self._stored_patterns())
        records, people, row = [], [], 0
        for name, meta, block in zip(names, metadata, blocks):
            faces = []
            for _ in range(len(block)):
                kept = features[row].astype(self.feature_dtype) if self.keep_features else None
                faces.append(FaceRecord(0, name, flat_cells[row], base[row], kept, warm[row]))
                row += 1
            records += faces
            people.append((name, meta, faces))
        return names, people, records

    def _stored_patterns(self) -> tuple[int, ...]:
        """The warm patterns whose embeddings an enrollment stores: none while the features are kept."""
        return () if self.keep_features else self.warm_patterns

    def _enrolled(self, names: set[str], records: list[FaceRecord], replace: bool) -> None:
        """Take faces the store has just committed into the search data."""
        with self._lock:
            if replace:
                self._forget(lambda face_identity: face_identity in names)
            self._add(records)

    def warm(self) -> None:
        """Compute the warm patterns' embeddings for every face that lacks them (one product per group).

        Identifications do this themselves for the patterns they need; call it after a bulk
        enrollment (e.g. from a background thread) so the first probes find them ready. With
        ``ann_min_faces``, it also builds the HNSW index of each warm pattern of a group that large.
        """
        self._check_open()
        with self._lock:
            if self.keep_features:
                for group in self._groups.values():
                    for pattern in self.warm_patterns:
                        union = pattern | group.cells
                        embeddings = self._embeddings(group, union, probe=False)
                        large = self.ann_min_faces is not None and len(embeddings) >= self.ann_min_faces
                        if large and (group.cells, union) not in self._indexes:
                            self._indexes[(group.cells, union)] = PatternIndex(embeddings, group.face_ids)

    def remove(self, identity: str) -> None:
        """Remove ``identity`` and all its faces (UnknownIdentityError if it is not enrolled)."""
        self._check_open()
        name = stored_name(identity)
        with self._write_lock:
            self._store.remove_identity(name)
            with self._lock:
                self._forget(lambda face_identity: face_identity == name)

    def identities(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Enrolled identity names, sorted; ``offset``/``limit`` page through them."""
        self._check_open()
        return self._store.identities(offset, limit)

    def metadata(self, identity: str) -> dict:
        self._check_open()
        return self._store.metadata(stored_name(identity))

    @property
    def location(self) -> str:
        """Where the gallery is stored: its file, or its database URL without the password."""
        return self._store.location

    def __len__(self) -> int:
        self._check_open()
        return self._store.count()

    def __contains__(self, identity: object) -> bool:
        self._check_open()
        return isinstance(identity, str) and self._store.contains(identity)

    # -- identification -----------------------------------------------------------------------

    def identify(
        self,
        image: object,
        occlusion: object = None,
        k: int = 5,
        threshold: float | None = None,
        landmarks=None,
        detection: DetectionSettings | None = None,
    ) -> Identification | list[Identification]:
        """The ``k`` best-matching identities of one face, best first (scores as ``Recognizer.verify``).

        An aligned crop (or a photo with its ``landmarks``) gives one ``Identification``; a photo gives
        one per face found in it, each saying where the face is.
        """
        images = [image] if isinstance(image, np.ndarray) and image.ndim == 3 else image
        landmarks = None if landmarks is None else [landmarks]
        one_face = occlusion is not None and not isinstance(occlusion, str) and _one_pattern(occlusion)
        located = self._recognizer.locate(images, landmarks, detection, argument="image")
        if located.images != 1:
            raise ValueError(f"image: expected one image, got {located.images}; use identify_many for a batch")
        results = self._identified(located, [occlusion] if one_face else occlusion, k, threshold)
        return results if located.sources is not None else results[0]

    def identify_many(
        self,
        images: object,
        occlusion: object = None,
        k: int = 5,
        threshold: float | None = None,
        landmarks=None,
        detection: DetectionSettings | None = None,
    ) -> list[Identification]:
        """Identify a batch of images (one result per face; ``image`` says whose); probes with the same
        pattern share one pattern computation."""
        self._check_open()
        return self._identified(self._recognizer.locate(images, landmarks, detection), occlusion, k, threshold)

    def _identified(self, located, occlusion: object, k: int, threshold: float | None) -> list[Identification]:
        self._check_open()
        features = self._recognizer.features(located.batch)
        results = self.identify_features(features, self._recognizer.occlusion_of(occlusion, located), k, threshold)
        if located.sources is None:
            return [dataclasses.replace(result, image=index) for index, result in enumerate(results)]
        return [dataclasses.replace(r, image=s.image, face=s.face) for r, s in zip(results, located.sources)]

    def identify_features(
        self, features: np.ndarray, occlusion: object = None, k: int = 5, threshold: float | None = None
    ) -> list[Identification]:
        """``identify_many`` from probes' trunk features already computed (``Recognizer.features``)."""
        features, probe_patterns, k, threshold = self._checked_probes(features, occlusion, k, threshold)
        by_pattern: dict[int, list[int]] = {}
        for index, pattern in enumerate(probe_patterns):
            by_pattern.setdefault(pattern, []).append(index)
        with self._lock:
            self._sync()
            missing = self._uncached(by_pattern)
        if missing:
            self._precompute(missing)
        with self._lock:
            scores_of: dict[int, list] = {}
            for pattern, probes in by_pattern.items():
                for group in self._groups.values():
                    union, exact = self._pattern_for(group, pattern | group.cells)
                    gallery = self._embeddings(group, union, probe=False)  # counted by _uncached
                    probe = _normalised(self._slice(union).apply(features[probes], None, self._head))
                    for index, rows, scores in self._scored(group, union, gallery, probe, probes, k):
                        scores_of.setdefault(index, []).append((group, rows, scores, union, exact))
            return [
                Identification(_best(scores_of.get(i, []), k, threshold), list(Occlusion(probe_patterns[i]).cells))
                for i in range(len(features))
            ]

    def _checked_probes(
        self, features: object, occlusion: object, k: object, threshold: object
    ) -> tuple[np.ndarray, list[int], int, float | None]:
        """The probes' flat features and patterns, ``k`` and ``threshold``, checked."""
        self._check_open()
        checked = self._checked_features(features)
        patterns = [o.bits for o in prepare_occlusion(occlusion, len(checked))]
        return checked, patterns, check_int(k, "k", 1), check_real(threshold, "threshold", -1.0, 1.0, optional=True)

    def _uncached(self, by_pattern: dict[int, list[int]]) -> list[_PatternWork]:
        """The group embeddings the probes' patterns need that are not cached yet, with the rows to compute them
        from (views: appends leave a prefix as it is, removals replace the arrays and count in ``removals``)."""
        if not self.keep_features:
            return []
        work = {}
        for pattern in by_pattern:
            for group in self._groups.values():
                union, _ = self._pattern_for(group, pattern | group.cells)
                entry = self._cache.get((group.cells, union))  # the probe's lookup: a hit or a miss
                have = 0 if entry is None else len(entry)
                if have < len(group.face_ids) and (group.cells, union) not in work:
                    work[(group.cells, union)] = _PatternWork(
                        group, union, have, group.kept_features.array, group.base.array, group.removals
                    )
        return list(work.values())

    def _precompute(self, missing: list[_PatternWork]) -> None:
        """Compute new patterns' embeddings outside the search lock, so searches under cached patterns go on
        meanwhile; at most ``pattern_workers`` at once, at most ``pattern_queue`` waiting (``PatternBusyError``
        beyond: a clear 503 for the service rather than an unbounded pile of products)."""
        with self._queue_lock:
            if self._waiting >= self.pattern_queue + self.pattern_workers:
                raise PatternBusyError(
                    f"the gallery is computing {self._waiting} new occlusion pattern(s) already, its limit "
                    f"({self.pattern_workers} at once, {self.pattern_queue} waiting); retry shortly, or probe "
                    f"under a warm pattern"
                )
            self._waiting += 1
        try:
            with self._pattern_slots:
                for item in missing:
                    started = time.perf_counter()
                    rows = slice(item.have, len(item.features))
                    head = self._slice(item.union)
                    features = item.features[rows]
                    item.rows = _normalised(
                        head.apply(features.reshape(len(features), -1), item.base[rows], self._head)
                    )
                    item.seconds = time.perf_counter() - started
        finally:
            with self._queue_lock:
                self._waiting -= 1
        with self._lock:
            for item in missing:
                self._cache_computed(item)

    def _cache_computed(self, item: _PatternWork) -> None:
        """Keep a pattern computed outside the lock, when it still lines up with the group's rows."""
        group = self._groups.get(item.group.cells)
        if group is not item.group or group.removals != item.removals or item.rows is None:
            return  # rows were removed meanwhile: the search computes what it needs under the lock
        key = (group.cells, item.union)
        entry = self._cache.get(key, count=False)
        if entry is None and item.have == 0:
            entry = Rows(self._head.embedding_size, np.float32)
            entry.append(item.rows)
            self._cache.put(key, entry, item.seconds)
        elif entry is not None and len(entry) == item.have:
            entry.append(item.rows)
            self._cache.resized(key, item.seconds)

    def repair(self) -> tuple[list[DamagedFace], list[str]]:
        """Remove the damaged faces from the store (and identities left with none); returns both."""
        self._check_open()
        with self._write_lock, self._lock:
            removed = list(self.damaged)
            emptied = self._store.remove_faces([face.face_id for face in removed]) if removed else []
            self.damaged.clear()
            return removed, emptied

    def stats(self) -> GalleryStats:
        self._check_open()
        with self._lock:
            feature_bytes = sum(g.features.nbytes for g in self._groups.values() if g.features is not None)
            faces = sum(len(g.face_ids) for g in self._groups.values())
            index_bytes = sum(index.nbytes for index in self._indexes.values())
            return GalleryStats(
                self._store.count(),
                faces,
                len(self._groups),
                feature_bytes,
                self._cache.stats(),
                len(self._indexes),
                index_bytes,
                len(self.damaged),
            )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError("this gallery was closed; open it again with Gallery.open")

    def _checked_features(self, features: object) -> np.ndarray:
        if not isinstance(features, np.ndarray) or features.ndim < 2 or not len(features):
            raise InputError(
                "features",
                f"features: expected a non-empty (N, {self._head.feature_size}) array from Recognizer.features, "
                f"got {getattr(features, 'shape', type(features).__name__)}",
            )
        flat = features.reshape(len(features), -1)
        if flat.shape[1] != self._head.feature_size or flat.dtype.kind != "f" or not np.isfinite(flat).all():
            raise InputError(
                "features",
                f"features: expected finite floats of {self._head.feature_size} values per face (this model's "
                f"trunk), got {flat.dtype} with {flat.shape[1]} per face",
            )
        return flat

    def _slice(self, pattern: int) -> HeadSlice:
        """The head's weights over the columns a pattern's products need, gathered once per pattern.

        Under the gallery's (re-entrant) lock: enrollments reach it outside any other locked section."""
        with self._lock:
            found = self._slices.get(pattern)
            if found is None:
                cells = list(Occlusion(pattern).cells)
                discarded = np.flatnonzero(self._discard[cells].sum(axis=0) > 0) if cells else np.zeros(0, np.int64)
                found = self._slices[pattern] = self._head.slice(discarded)
                self._slice_bytes += found.nbytes
                while self._slice_bytes > self.slice_budget and len(self._slices) > 1:
                    self._slice_bytes -= self._slices.popitem(last=False)[1].nbytes
            self._slices.move_to_end(pattern)
            return found

    def _warm_embeddings(
        self, features: np.ndarray, cells: list[int], base: np.ndarray, warm_patterns: Sequence[int]
    ) -> dict[int, dict]:
        """Row -> {pattern: normalised embedding} under each of ``warm_patterns`` joined with the face's cells."""
        out: dict[int, dict] = {row: {} for row in range(len(features))}
        unions = [[warm | c for c in cells] for warm in warm_patterns]
        for patterns in unions:
            for pattern in set(patterns):
                rows = [r for r, p in enumerate(patterns) if p == pattern]
                embedded = _normalised(self._slice(pattern).apply(features[rows], base[rows], self._head))
                for r, e in zip(rows, embedded):
                    out[r][pattern] = e
        return out

    def _pattern_for(self, group: _Group, union: int) -> tuple[int, bool]:
        """The pattern to compare ``group`` under: ``union`` itself, or the smallest stored one covering it."""
        if self.keep_features or union in group.stored:
            return union, True
        covering = [p for p in group.stored if p & union == union]
        if not covering:
            stored = ", ".join(str(list(Occlusion(p).cells)) for p in sorted(group.stored)) or "none"
            raise GalleryError(
                f"the gallery keeps no features, and no stored pattern covers cells {list(Occlusion(union).cells)} (stored: "
                f"{stored}); re-create it with keep_features=True, or with this pattern among warm_patterns"
            )
        return min(covering, key=lambda p: (bin(p).count("1"), p)), False

    def _embeddings(self, group: _Group, pattern: int, probe: bool = True) -> np.ndarray:
        """The group's normalised embeddings under ``pattern``: stored, cached (completed for faces
        enrolled since), or computed now.

        ``probe``: a probe's lookup, counted in the cache's hits and misses (warming is not).
        """
        if not self.keep_features:
            return group.stored[pattern].array
        key = (group.cells, pattern)
        entry = self._cache.get(key, count=probe)
        have = 0 if entry is None else len(entry)
        if entry is None or have < len(group.face_ids):
            started = time.perf_counter()
            rows = self._compute(group, pattern, slice(have, None))
            if entry is None:
                entry = Rows(self._head.embedding_size, np.float32)
                entry.append(rows)
                self._cache.put(key, entry, time.perf_counter() - started)
            else:
                entry.append(rows)
                self._cache.resized(key, time.perf_counter() - started)
        return entry.array

    def _compute(self, group: _Group, pattern: int, rows: slice) -> np.ndarray:
        base = group.base.array[rows]
        features = group.kept_features.array[rows]
        return _normalised(self._slice(pattern).apply(features.reshape(len(features), -1), base, self._head))

    def _load(self, sizes: dict[int, int], records: Iterator[FaceRecord]) -> None:
        """Every stored face, taken in ``LOAD_CHUNK`` at a time into arrays sized once from ``sizes`` (faces
        per group): peak memory at load is about the arrays', not a copy of the whole gallery beside them."""
        for cells, count in sizes.items():
            self._new_group(cells, count)
        for chunk in iter(lambda: list(itertools.islice(records, LOAD_CHUNK)), []):
            self._add(chunk)

    def _new_group(self, cells: int, reserve: int = 0) -> _Group:
        group = self._groups[cells] = _Group(cells, Rows(self._head.embedding_size, np.float32))
        group.base.reserve(reserve)
        if self.keep_features:
            group.features = Rows(self._head.feature_size, self.feature_dtype)
            group.features.reserve(reserve)
        return group

    def _add(self, records: list[FaceRecord]) -> None:
        """Append faces to their groups, and their rows to every cached pattern of those groups (a face held
        already, taken in from the store by a search before its enrollment got here, is not added twice)."""
        by_group: dict[int, list[FaceRecord]] = {}
        for record in records:
            if record.face_id in self._face_ids:
                continue
            if self.keep_features and record.features is None:
                raise GalleryError(f"gallery {self._store.location}: face {record.face_id} has no stored features")
            by_group.setdefault(record.cells, []).append(record)
        width = self._head.embedding_size
        for cells, members in by_group.items():
            group = self._groups.get(cells) or self._new_group(cells)
            group.face_ids += [m.face_id for m in members]
            group.identities += [m.identity for m in members]
            group.base.extend([m.base for m in members])
            if self.keep_features:
                kept = [m.features for m in members if m.features is not None]  # every one: checked above
                group.kept_features.extend(kept)  # cast to the gallery's dtype on the copy
            else:
                for pattern in {p for m in members for p in m.patterns}:
                    if pattern not in group.stored:
                        group.stored[pattern] = Rows(width, np.float32)
                    group.stored[pattern].append(np.stack([m.patterns[pattern] for m in members]))
        self._face_ids.update(record.face_id for record in records)

    def _forget(self, gone) -> None:
        """Drop the faces whose identity satisfies ``gone`` (a predicate), from groups and caches."""
        for group in list(self._groups.values()):
            keep = np.array([not gone(name) for name in group.identities], dtype=bool)
            if keep.all():
                continue
            self._drop_rows(group, keep)

    def _scored(self, group: _Group, union: int, gallery: np.ndarray, probe: np.ndarray, probes: list[int], k: int):
        """(probe index, gallery rows or None for all, exact scores) per probe: every row's
        score, or with an HNSW index of this pattern the exact scores of the candidates it found."""
        index = self._indexes.get((group.cells, union))
        if index is None:
            scores = probe @ gallery.T
            return [(i, None, scores[row]) for row, i in enumerate(probes)]
        index.extend(gallery, group.face_ids)
        found = index.candidates(probe, CANDIDATES_PER_MATCH * k)
        return [(i, rows, gallery[rows] @ probe[row]) for row, (i, rows) in enumerate(zip(probes, found))]

    def _drop_rows(self, group: _Group, keep: np.ndarray) -> None:
        indexes = [key for key in self._indexes if key[0] == group.cells]
        for key in indexes:
            self._indexes[key].keep(keep, group.face_ids)
        self._face_ids.difference_update(f for f, k in zip(group.face_ids, keep) if not k)
        if not keep.any():
            for key in indexes:
                del self._indexes[key]
            del self._groups[group.cells]
            self._cache.drop_group(group.cells)
            return
        group.removals += 1
        group.face_ids = [f for f, k in zip(group.face_ids, keep) if k]
        group.identities = [n for n, k in zip(group.identities, keep) if k]
        group.base.keep(keep)
        if group.features is not None:
            group.features.keep(keep)
        for rows in group.stored.values():
            rows.keep(keep)
        for key in self._cache.keys_of_group(group.cells):
            entry = self._cache.get(key, count=False)
            if entry is not None:
                entry.keep(keep[: len(entry)])  # an entry covers a prefix of the group's rows
                self._cache.resized(key, 0.0)

    def _sync(self) -> None:
        """Take in what other connections (processes) enrolled or removed since the last look."""
        if not self._store.changed():
            return
        stored = self._store.face_ids()
        held = self._face_ids | {face.face_id for face in self.damaged}
        gone = held - stored
        if gone:
            for group in list(self._groups.values()):
                keep = np.array([f not in gone for f in group.face_ids], dtype=bool)
                if not keep.all():
                    self._drop_rows(group, keep)
        new = stored - held
        if new:
            self._add(list(self._store.faces(sorted(new), self._head.embedding_size, self.damaged)))


def _bind(store: GalleryStore, recognizer, keep_features: bool, feature_dtype: str, warm: tuple[int, ...]) -> dict:
    """The gallery's settings; a new gallery records the recognizer's fingerprint, an old one must match it."""
    fingerprint = recognizer_fingerprint(recognizer)
    meta = store.read_meta()
    if not meta:
        settings = {"keep_features": keep_features, "feature_dtype": feature_dtype, "warm_patterns": list(warm)}
        store.write_meta(meta_values(fingerprint.to_dict(), settings))
        # Another process may have created it first: what counts is what was recorded.
        meta = store.read_meta()
    if meta.get("format") != GALLERY_FORMAT or meta.get("format_version") != str(GALLERY_FORMAT_VERSION):
        raise GalleryError(
            f"{store.location} is not a {GALLERY_FORMAT} version {GALLERY_FORMAT_VERSION} gallery "
            f"(format {meta.get('format')!r}, version {meta.get('format_version')!r})"
        )
    try:
        recorded = Fingerprint.from_dict(json.loads(meta["fingerprint"]))
        settings = json.loads(meta["settings"])
    except (KeyError, ValueError) as exc:
        raise GalleryError(f"gallery {store.location}: its model record is damaged ({exc!r})") from None
    problems = recorded.mismatch(fingerprint)
    if problems:
        raise GalleryError(
            f"gallery {store.location} was enrolled with another model than this recognizer's:\n  "
            + "\n  ".join(problems)
            + "\nOpen it with the bundle (and precision) it was enrolled with"
            + (
                f" (here: precision={recorded.precision!r}, `pdsn serve --precision {recorded.precision}`)"
                if recorded.precision != fingerprint.precision
                else ""
            )
            + ", or re-enroll the faces into a new gallery with this bundle"
        )
    return settings


def recorded_precision(location: str | Path) -> str | None:
    """The trunk precision a gallery's faces were enrolled with; None for a gallery that does not exist yet
    or records none. ``pdsn serve --precision auto`` serves that precision, so a bundle that gained a faster
    variant after enrollment still opens its gallery."""
    try:
        store = open_store(location, create=False)
    except NoGalleryError:
        return None
    try:
        meta = store.read_meta()
    finally:
        store.close()
    try:
        return str(json.loads(meta["fingerprint"])["precision"])
    except (KeyError, ValueError, TypeError):
        return None


def recognizer_fingerprint(recognizer) -> Fingerprint:
    """What the recognizer's trunk features and head depend on."""
    model_sha256, dictionary_sha256 = recognizer.bundle.manifest.fingerprint
    head = recognizer.folded_head
    return Fingerprint(
        model_sha256=model_sha256,
        dictionary_sha256=dictionary_sha256,
        precision=recognizer.precision,
        feature_size=head.feature_size,
        embedding_size=head.embedding_size,
    )


def _best(parts: list, k: int, threshold: float | None) -> list[Match]:
    """The best face per identity across groups, top ``k`` identities, at or above ``threshold``.

    ``parts``: (group, rows, scores, union, exact); ``scores`` are those of the group's ``rows``
    (None: of every row, in order).
    """
    candidates: dict[str, Match] = {}
    for group, rows, scores, union, exact in parts:
        if not len(scores):
            continue
        cells = list(Occlusion(union).cells)
        # Enough of the group's best faces to find k identities even if each has several faces.
        top = min(len(scores), k * CANDIDATES_PER_MATCH)
        order = np.argpartition(-scores, top - 1)[:top] if top < len(scores) else np.arange(len(scores))
        for position in order[np.argsort(-scores[order], kind="stable")]:
            score = float(scores[position])
            if threshold is not None and score < threshold:
                break
            row = position if rows is None else int(rows[position])
            name = group.identities[row]
            best = candidates.get(name)
            if best is None or score > best.score:
                candidates[name] = Match(name, score, group.face_ids[row], list(cells), exact)
    return sorted(candidates.values(), key=lambda m: (-m.score, m.identity))[:k]


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def _one_pattern(occlusion: object) -> bool:
    """Whether ``occlusion`` describes one face's cells (so ``identify`` wraps it for the batch call)."""
    if isinstance(occlusion, Occlusion):
        return True
    if isinstance(occlusion, np.ndarray):
        return occlusion.ndim == 1
    if not isinstance(occlusion, Iterable):
        return False  # not an occlusion: prepare_occlusion names it
    return all(not isinstance(item, (list, tuple, set, frozenset, np.ndarray)) for item in occlusion)


def _metadata(metadata: object) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    return metadata
