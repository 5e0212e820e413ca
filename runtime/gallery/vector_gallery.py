"""``VectorGallery``: the gallery searched inside PostgreSQL with pgvector; a replica holds no faces.

Each face is stored with its normalised embedding under every warm pattern W joined with its own
cells G. A probe with cells P is searched group by group (faces enrolled with the same G): under
the warm pattern whose W ∪ G equals the union P ∪ G when there is one (``exact``), otherwise the
smallest that covers it. Where the gallery keeps trunk features, the candidates found are scored
again exactly under P ∪ G from their stored features (fetched for the candidates only), as
``Recognizer.verify`` would score them; a union no warm pattern covers then takes its candidates
from the warm pattern nearest it. Without features, such a probe is refused.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from pdsn.errors import InputError
from pdsn.model.folded_head import HeadSlice
from pdsn.model.occlusion import Occlusion
from pdsn.model.validation import check_int
from pdsn.runtime.gallery.gallery import (
    CANDIDATES_PER_MATCH,
    SLICE_BUDGET_BYTES,
    Gallery,
    GalleryStats,
    Identification,
    _best,
    _bind,
    _normalised,
)
from pdsn.runtime.gallery.locations import open_store, shown_location
from pdsn.runtime.gallery.names import stored_name
from pdsn.runtime.gallery.patterns import CacheStats, warm_pattern_masks
from pdsn.runtime.gallery.pgvector_store import (
    BUILD_MEMORY_CAP_MB,
    EXACT_BELOW,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    Hit,
    IndexBuild,
    PgvectorStore,
    SearchPlan,
    SearchRequest,
    WarmPattern,
)
from pdsn.runtime.gallery.records import DamagedFace, FaceRecord, GalleryError

# Faces whose warm embeddings ``warm`` computes per transaction.
FILL_BATCH = 2000
# Candidates re-scored from their features per identity asked for, when searched under the union itself.
RESCORED_PER_MATCH = 4


@dataclass(frozen=True)
class _Target:
    """How one group is searched for a probe: under warm pattern ``warm`` (its embeddings under ``stored``), for
    the union ``union`` of the probe's and the group's cells (``covers``: ``stored`` covers it)."""

    warm: int
    cells: int
    stored: int
    union: int
    covers: bool
    limit: int
    exact: bool  # scanned, not walked: a small group
    other_groups: bool


@dataclass(frozen=True)
class _Hits:
    """A group's candidates in the shape ``_best`` reads: row i is face ``face_ids[i]`` of ``identities[i]``."""

    face_ids: list[int]
    identities: list[str]


class VectorGallery(Gallery):
    """``Gallery``'s API over a ``PgvectorStore``: enrollments and searches go to the database."""

    _store: PgvectorStore

    @property
    def ef_search(self) -> int:
        """Candidates each HNSW search walks (pgvector's ``hnsw.ef_search``): recall against speed."""
        return self._store.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._store.set_ef_search(check_int(value, "ef_search", 1))

    def __init__(self, store: PgvectorStore, recognizer, settings: dict, slice_bytes: int = SLICE_BUDGET_BYTES) -> None:
        # The in-memory gallery's search data are not made: only what enrollment and the probes' heads use.
        self._store = store
        self._recognizer = recognizer
        self._head = recognizer.folded_head
        self.keep_features = bool(settings["keep_features"])
        self.feature_dtype = np.dtype(settings["feature_dtype"])
        self.warm_patterns = tuple(int(p) for p in settings["warm_patterns"])
        self.ann_min_faces = None
        self._discard = 1.0 - recognizer.bundle.dictionary.reshape(len(recognizer.bundle.dictionary), -1)
        self._slices: OrderedDict[int, HeadSlice] = OrderedDict()
        self._slice_bytes = 0
        self.slice_budget = slice_bytes
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._closed = False
        self.damaged: list[DamagedFace] = []
        self._plan_seen: SearchPlan | None = None  # the last plan read: the next identification assumes it

    @classmethod
    def open_location(
        cls,
        location: str,
        recognizer,
        create: bool,
        keep_features: bool,
        feature_dtype: str,
        warm_patterns: tuple[int, ...],
        slice_bytes: int,
        ef_search: int | None,
    ) -> VectorGallery:
        store = open_store(location, create)
        if not isinstance(store, PgvectorStore):
            store.close()
            raise GalleryError(
                f"{shown_location(location)} is not a pgvector gallery (pgvector:// or pgvector+embedded://)"
            )
        try:
            settings = _bind(store, recognizer, keep_features, feature_dtype, warm_patterns)
            store.write_meta({})  # an existing gallery: its vector tables are checked against this model
            gallery = cls(store, recognizer, settings, slice_bytes)
            if ef_search is not None:
                gallery.ef_search = ef_search
            return gallery
        except BaseException:
            store.close()
            raise

    # -- enrollment ---------------------------------------------------------------------------

    def _stored_patterns(self) -> tuple[int, ...]:
        """Every warm pattern listed, searchable yet or not: a pattern being filled misses no new face."""
        return tuple(entry.pattern for entry in self._store.warm_patterns())

    def _enrolled(self, names: set[str], records: list[FaceRecord], replace: bool) -> None:
        """Nothing to hold: the database is searched."""

    def remove(self, identity: str) -> None:
        """Remove ``identity`` and all its faces (UnknownIdentityError if it is not enrolled)."""
        self._check_open()
        self._store.remove_identity(stored_name(identity))

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        """Fill in every listed warm pattern's embeddings for the faces lacking them, ``FILL_BATCH`` faces per
        transaction (a killed run resumes where it stopped), then mark it searchable."""
        self._check_open()
        for entry in self._store.warm_patterns():
            while not entry.complete:
                if not self.keep_features:
                    raise GalleryError(
                        f"gallery {self.location}: warm pattern {list(Occlusion(entry.pattern).cells)} lacks embeddings, and the "
                        "gallery keeps no features to compute them from; re-enroll the faces it lacks"
                    )
                after = 0
                while ids := self._store.faces_lacking(entry.warm, after, FILL_BATCH):
                    self._fill(entry, ids)
                    after = ids[-1]
                    if progress is not None:
                        progress(len(ids))
                entry = WarmPattern(entry.warm, entry.pattern, self._store.complete_warm(entry.warm))

    def add_warm_pattern(self, cells: Sequence[int], progress: Callable[[int], None] | None = None) -> None:
        """Add a warm pattern to the gallery (its index built without blocking writes) and fill it in."""
        self._check_open()
        (pattern,) = warm_pattern_masks((tuple(cells),))
        self._store.add_warm_pattern(pattern)
        self.warm(progress)

    @contextmanager
    def bulk_load(
        self,
        hnsw_m: int = HNSW_M,
        hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION,
        build_memory_cap_mb: int = BUILD_MEMORY_CAP_MB,
        build_after: bool = True,
    ) -> Iterator[None]:
        """Enroll many faces at once: the HNSW indexes are dropped for the load and built again after it (an
        index maintained face by face costs several times the load). Searches meanwhile scan exactly.

        ``hnsw_m`` and ``hnsw_ef_construction`` size the graphs built after it: pgvector's defaults (16, 64), or
        larger for more recall at the same ``ef_search`` and a longer build (``docs/pgvector.md`` measures both).
        Each graph is built in memory sized to it, at most ``build_memory_cap_mb`` on the server. With
        ``build_after`` false the graphs are left to ``build_indexes`` (a pattern at a time, the busiest first).
        """
        self._check_open()
        settings = _graph_settings(hnsw_m, hnsw_ef_construction, build_memory_cap_mb)
        self._store.drop_indexes()
        try:
            yield
        finally:
            if build_after:
                self._store.build_indexes(*settings)

    def build_indexes(
        self,
        hnsw_m: int = HNSW_M,
        hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION,
        build_memory_cap_mb: int = BUILD_MEMORY_CAP_MB,
        patterns: Sequence[Sequence[int]] | None = None,
    ) -> list[IndexBuild]:
        """Build the HNSW graph of every warm pattern that has none (as after an interrupted bulk load), or of the
        warm ``patterns`` (cell lists) only, one at a time, and say how each was built; the graphs already there
        are kept. A warm pattern without its graph is still searched, by scanning its embeddings exactly."""
        self._check_open()
        settings = _graph_settings(hnsw_m, hnsw_ef_construction, build_memory_cap_mb)
        only = None if patterns is None else self._warm_numbers(patterns)
        return self._store.build_indexes(*settings, only=only)

    def _warm_numbers(self, patterns: Sequence[Sequence[int]]) -> frozenset[int]:
        """The store's numbers of the warm ``patterns`` (cell lists), each checked to be one of the gallery's."""
        listed = {entry.pattern: entry.warm for entry in self._store.warm_patterns()}
        numbers = set()
        for mask in warm_pattern_masks(tuple(patterns), "patterns"):
            if mask not in listed:
                held = ", ".join(str(list(Occlusion(p).cells)) for p in listed)
                raise InputError(
                    "patterns",
                    f"cells {list(Occlusion(mask).cells)} are not a warm pattern of gallery {self.location} "
                    f"(warm: {held}); add it first (`pdsn gallery warm --add CELLS`)",
                )
            numbers.add(listed[mask])
        return frozenset(numbers)

    def index_builds(self) -> tuple[IndexBuild, ...]:
        """How the HNSW graphs the gallery holds were built (those built by a bulk load or a migration)."""
        self._check_open()
        return self._store.index_builds()

    def _fill(self, entry: WarmPattern, ids: list[int]) -> None:
        faces = self._store.scoring_faces(ids, self._head.embedding_size, self.damaged)
        embeddings = np.empty((len(faces), self._head.embedding_size), np.float32)
        for cells in {face.cells for face in faces}:
            rows = [i for i, face in enumerate(faces) if face.cells == cells]
            embeddings[rows] = self._under(entry.pattern | cells, [faces[i] for i in rows])
        self._store.add_vectors(entry.warm, faces, embeddings)

    def _under(self, pattern: int, faces: list[FaceRecord]) -> np.ndarray:
        """The faces' normalised embeddings under ``pattern``, from their stored features."""
        kept = [face.features for face in faces if face.features is not None]
        if len(kept) != len(faces):
            raise GalleryError(
                f"gallery {self.location}: a face has no stored trunk features, so no new pattern can be computed "
                "for it; re-create the gallery keeping features"
            )
        features = np.stack(kept)
        base = np.stack([face.base for face in faces])
        return _normalised(self._slice(pattern).apply(features, base, self._head))

    # -- identification -----------------------------------------------------------------------

    def identify_features(
        self, features: np.ndarray, occlusion: object = None, k: int = 5, threshold: float | None = None
    ) -> list[Identification]:
        """``identify_many`` from probes' trunk features: one database query per probe and group, a probe's
        queries in one round trip. The first probe's go out in the same round trip as the plan they assume (the last
        one read); they are kept only where the plan read asks for the very same searches, and made again under it
        otherwise."""
        features, patterns, k, threshold = self._checked_probes(features, occlusion, k, threshold)
        plan, first = None, None
        embedded_first = self._embedder(features[:1])
        assumed = self._assumed_targets(patterns[0], k) if patterns else None
        if assumed is not None:
            requests = self._requests(assumed, embedded_first)
            plan, found = self._store.plan_and_search(requests, self._head.embedding_size, self.damaged)
            if self._targets(plan, patterns[0], k) == assumed:
                first = self._parts(assumed, found, embedded_first)
        if plan is None:
            plan = self._store.plan()
        self._plan_seen = plan
        identifications = []
        for i, pattern in enumerate(patterns):
            embedded = embedded_first if i == 0 else self._embedder(features[i : i + 1])
            if i > 0 or first is None:
                targets = self._targets(plan, pattern, k)
                requests = self._requests(targets, embedded)
                found = self._store.run_searches(requests, self._head.embedding_size, self.damaged)
                parts = self._parts(targets, found, embedded)
            else:
                parts = first
            identifications.append(Identification(_best(parts, k, threshold), list(Occlusion(pattern).cells)))
        return identifications

    def _embedder(self, probe: np.ndarray) -> Callable[[int], np.ndarray]:
        """The probe's (one row of trunk features) normalised embedding under a pattern, each made once: a
        search under the union itself re-scores with the embedding it searched with."""

        @functools.cache
        def embedded(pattern: int) -> np.ndarray:
            return _normalised(self._slice(pattern).apply(probe, None, self._head))[0]

        return embedded

    def _assumed_targets(self, pattern: int, k: int) -> list[_Target] | None:
        """The targets under the last plan read, where there is one and it can be searched."""
        if self._plan_seen is None:
            return None
        try:
            return self._targets(self._plan_seen, pattern, k)
        except GalleryError:  # the plan read next decides, and says why
            return None

    def _targets(self, plan: SearchPlan, pattern: int, k: int) -> list[_Target]:
        """What each group of ``plan`` is searched under for a probe with cells ``pattern``, ``k`` asked for."""
        searchable = [entry for entry in plan.warm if entry.complete]
        if plan.groups and not searchable:
            raise GalleryError(
                f"gallery {self.location}: no warm pattern has every face's embedding yet; fill them in with "
                "`pdsn gallery warm` (Gallery.warm)"
            )
        targets = []
        for cells, size in sorted(plan.groups.items()):
            union = pattern | cells
            entry, covers = self._search_pattern(searchable, cells, union)
            stored = entry.pattern | cells
            # With features kept every candidate comes with its features and is re-scored exactly; under the union
            # itself the stored scores differ from exact by half precision only, so the best few suffice.
            per_match = RESCORED_PER_MATCH if self.keep_features and stored == union else CANDIDATES_PER_MATCH
            targets.append(
                _Target(
                    entry.warm, cells, stored, union, covers, k * per_match, size < EXACT_BELOW, len(plan.groups) > 1
                )
            )
        return targets

    def _requests(self, targets: list[_Target], embedded: Callable[[int], np.ndarray]) -> list[SearchRequest]:
        """The database searches for ``targets``: the probe embedded under each one's stored pattern, every
        candidate read with its features where they are kept."""
        return [
            SearchRequest(
                t.warm, t.cells, embedded(t.stored), t.limit, t.exact, t.limit if self.keep_features else 0,
                t.other_groups,
            )
            for t in targets
        ]  # fmt: skip

    def _parts(
        self, targets: list[_Target], found: list[tuple[list[Hit], dict]], embedded: Callable[[int], np.ndarray]
    ) -> list:
        """Each group's candidates and scores in the shape ``_best`` reads, re-scored where features are kept."""
        parts = []
        for t, (hits, faces) in zip(targets, found):
            if self.keep_features:
                hits, scores = self._rescored(hits, faces, t.union, embedded(t.union))
                scored_under, exact = t.union, True
            else:
                scores = np.array([h.score for h in hits])
                scored_under, exact = t.stored, t.covers and t.stored == t.union
            if hits:
                found_hits = _Hits([h.face_id for h in hits], [h.identity for h in hits])
                parts.append((found_hits, None, scores, scored_under, exact))
        return parts

    def _search_pattern(self, searchable: list[WarmPattern], cells: int, union: int) -> tuple[WarmPattern, bool]:
        """The warm pattern to search group ``cells`` under for ``union``, and whether it covers the union."""
        covering = [e for e in searchable if (e.pattern | cells) & union == union]
        if covering:
            return min(covering, key=lambda e: (bin(e.pattern | cells).count("1"), e.warm)), True
        if not self.keep_features:
            stored = ", ".join(str(list(Occlusion(e.pattern).cells)) for e in searchable)
            raise GalleryError(
                f"the gallery keeps no features, and no stored pattern covers cells {list(Occlusion(union).cells)} (warm: {stored}); "
                "add one that does (`pdsn gallery warm --add CELLS`), or re-create the gallery keeping features"
            )
        # Candidates from the nearest warm pattern; their scores are then exact under the union.
        return min(searchable, key=lambda e: (bin((e.pattern | cells) ^ union).count("1"), e.warm)), False

    def _rescored(
        self, hits: list[Hit], faces: dict[int, FaceRecord], union: int, embedded: np.ndarray
    ) -> tuple[list[Hit], np.ndarray]:
        """The hits whose stored features read back whole (``faces``), with their exact scores under ``union``
        (``embedded``: the probe's embedding under it)."""
        kept = [h for h in hits if h.face_id in faces]
        if not kept:
            return [], np.zeros(0, np.float32)
        return kept, self._under(union, [faces[h.face_id] for h in kept]) @ embedded

    # -- the rest of Gallery's API ------------------------------------------------------------

    def stats(self) -> GalleryStats:
        self._check_open()
        plan = self._store.plan()
        return GalleryStats(
            self._store.count(),
            sum(plan.groups.values()),
            len(plan.groups),
            0,
            CacheStats(0, 0, 0.0, 0, 0, 0),
            len(plan.warm),
            self._store.index_bytes(),
            len(self.damaged),
        )


def _graph_settings(m: object, ef_construction: object, memory_cap_mb: object) -> tuple[int, int, int]:
    """HNSW build settings within pgvector's bounds: m 2 to 100, ef_construction 2m to 1000."""
    links = check_int(m, "hnsw_m", 2)
    if links > 100:
        raise InputError("hnsw_m", f"hnsw_m must be an integer from 2 to 100 (pgvector's bounds), got {links}")
    candidates = check_int(ef_construction, "hnsw_ef_construction", 2 * links)
    if candidates > 1000:
        raise InputError(
            "hnsw_ef_construction",
            f"hnsw_ef_construction must be an integer from 2 * hnsw_m to 1000 (pgvector's bounds), got {candidates}",
        )
    return links, candidates, check_int(memory_cap_mb, "build_memory_cap_mb", 1)  # PostgreSQL's least
