"""`Gallery`: 1:N identification under the PDSN union rule, its pattern cache, persistence and faults."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pdsn.model.grid import SCARF_CELLS, SUNGLASSES_CELLS
from pdsn.runtime import Recognizer
from pdsn.runtime.gallery import DuplicateIdentityError, Gallery, GalleryError, UnknownIdentityError
from pdsn.train.occlusion import occlude
from pdsn.train.synthetic import SyntheticFaces

IDENTITIES, IMAGES = 12, 3


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    """The trained demo model (synthetic faces), FP32 only: its embeddings identify synthetic identities."""
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    out = tmp_path_factory.mktemp("gallery") / "demo"
    export_bundle(ExportRequest(out=out, weights="demo"))
    return out


@pytest.fixture(scope="module")
def recognizer(demo_bundle):
    with Recognizer.open(demo_bundle, backend="onnxruntime", precision="fp32", max_delay_ms=0.0) as rec:
        yield rec


@pytest.fixture(scope="module")
def faces():
    images, _ = SyntheticFaces(IDENTITIES, IMAGES, seed=77).generate()
    return images.reshape(IDENTITIES, IMAGES, *images.shape[1:])


@pytest.fixture(params=["sqlite", "postgresql", "pgvector"])
def place(request, tmp_path):
    """``place(name)``: the location of a gallery named ``name`` in this test: a SQLite file, a database, or a
    database searched with pgvector."""
    if request.param == "sqlite":
        return lambda name: tmp_path / f"{name}.db"
    server, places = request.getfixturevalue({"postgresql": "postgres"}.get(request.param, request.param)), {}
    return lambda name: places.setdefault(name, server.database())


def _searched_in_memory(place) -> None:
    """Skip a test of the in-memory search data (the pattern cache) for a gallery searched in the database."""
    if str(place("g")).startswith("pgvector"):
        pytest.skip("a pgvector gallery has no pattern cache: the database searches")


def _enrolled(path, recognizer, faces, **options) -> Gallery:
    gallery = Gallery.open(path, recognizer, **options)
    for i in range(IDENTITIES):
        gallery.enroll(f"person-{i:02d}", faces[i, :1], metadata={"index": i})
    return gallery


def _sunglasses(image, seed):
    occluded = occlude(image, "sunglasses", np.random.default_rng(seed))
    return occluded.image, [int(c) for c in np.flatnonzero(occluded.cells)]


def test_identifies_occluded_probes_and_scores_as_verify(place, recognizer, faces):
    with _enrolled(place("g"), recognizer, faces, feature_dtype="float32") as gallery:
        assert len(gallery) == IDENTITIES and "person-03" in gallery and "nobody" not in gallery
        assert gallery.identities(offset=2, limit=2) == ["person-02", "person-03"]
        correct = 0
        for i in range(IDENTITIES):
            probe, cells = _sunglasses(faces[i, 1], seed=i)
            result = gallery.identify(probe, occlusion=cells, k=3)
            assert result.occluded_cells == cells and len(result.matches) == 3
            best = result.matches[0]
            correct += best.identity == f"person-{i:02d}"
            assert best.occluded_cells == cells and best.exact
            expected = recognizer.verify(probe, faces[int(best.identity[-2:]), 0], occlusion_a=cells).score
            assert abs(best.score - expected) <= 1e-5
            assert [m.score for m in result.matches] == sorted((m.score for m in result.matches), reverse=True)
        assert correct >= IDENTITIES - 2, f"rank-1 {correct}/{IDENTITIES}"


def test_union_rule_with_a_gallery_face_enrolled_occluded(place, recognizer, faces):
    scarf_face = occlude(faces[0, 0], "scarf", np.random.default_rng(3))
    face_cells = [int(c) for c in np.flatnonzero(scarf_face.cells)]
    with Gallery.open(place("g"), recognizer, feature_dtype="float32") as gallery:
        gallery.enroll("scarfed", scarf_face.image, occlusion=face_cells)
        gallery.enroll("clean", faces[1, 0])
        probe, probe_cells = _sunglasses(faces[0, 1], seed=5)
        matches = {m.identity: m for m in gallery.identify(probe, occlusion=probe_cells, k=5).matches}
        union = sorted(set(face_cells) | set(probe_cells))
        assert matches["scarfed"].occluded_cells == union and matches["clean"].occluded_cells == probe_cells
        expected = recognizer.verify(probe, scarf_face.image, occlusion_a=probe_cells, occlusion_b=face_cells).score
        assert abs(matches["scarfed"].score - expected) <= 1e-5


def test_identify_many_shares_one_computation_per_pattern(place, recognizer, faces):
    _searched_in_memory(place)
    with _enrolled(place("g"), recognizer, faces, warm_patterns=[()]) as gallery:
        gallery.warm()
        before = gallery.stats().cache
        assert before.entries == 1 and before.misses == 0  # the warm clean pattern: warming is not a miss
        probes = [faces[i, 2] for i in range(6)]
        patterns = [[12], [12], [3, 4], [12], [], [3, 4]]
        results = gallery.identify_many(probes, occlusion=patterns, k=1)
        assert [r.occluded_cells for r in results] == [sorted(p) for p in patterns]
        after = gallery.stats().cache
        assert after.misses - before.misses == 2 and after.hits - before.hits == 1 and after.entries == 3
        one = [gallery.identify(p, occlusion=c, k=1).matches[0] for p, c in zip(probes, patterns)]
        assert [r.matches[0].identity for r in results] == [m.identity for m in one]
        assert all(abs(r.matches[0].score - m.score) < 1e-5 for r, m in zip(results, one))


def test_warm_patterns_are_hits_and_the_cache_keeps_its_budget(place, recognizer, faces):
    _searched_in_memory(place)
    with _enrolled(place("g"), recognizer, faces) as gallery:
        gallery.warm()
        stats = gallery.stats()
        assert stats.cache.entries == 3 and stats.faces == IDENTITIES
        gallery.identify(faces[0, 1], occlusion=list(SUNGLASSES_CELLS))
        gallery.identify(faces[0, 1], occlusion=list(SCARF_CELLS))
        assert gallery.stats().cache.hits == 2 and gallery.stats().cache.misses == 0
    entry = IDENTITIES * 512 * 4
    with Gallery.open(place("g"), recognizer, cache_bytes=2 * entry) as gallery:
        for cell in range(5):
            gallery.identify(faces[0, 1], occlusion=[cell])
        stats = gallery.stats().cache
        assert stats.entries == 2 and stats.bytes <= 2 * entry and stats.misses == 5


def test_without_features_a_covering_pattern_answers_and_says_so(place, recognizer, faces):
    with _enrolled(place("full"), recognizer, faces) as full:
        expected = full.identify(faces[2, 1], occlusion=list(SUNGLASSES_CELLS)).matches
    with _enrolled(place("g"), recognizer, faces, keep_features=False) as gallery:
        assert gallery.stats().feature_bytes == 0
        stored = gallery.identify(faces[2, 1], occlusion=list(SUNGLASSES_CELLS)).matches
        assert all(m.exact for m in stored)
        assert [m.identity for m in stored] == [m.identity for m in expected]
        assert np.allclose([m.score for m in stored], [m.score for m in expected], atol=2e-3)  # fp16 features
        covered = gallery.identify(faces[2, 1], occlusion=[11]).matches
        assert not any(m.exact for m in covered) and covered[0].occluded_cells == list(SUNGLASSES_CELLS)
        assert [m.identity for m in covered] == [m.identity for m in stored]
        with pytest.raises(GalleryError, match="no stored pattern covers cells"):
            gallery.identify(faces[2, 1], occlusion=[0, 24])


def test_persists_and_reloads(place, recognizer, faces):
    with _enrolled(place("g"), recognizer, faces) as gallery:
        before = gallery.identify(faces[5, 1], occlusion=[20, 21]).matches
        gallery.remove("person-00")
    with Gallery.open(place("g"), recognizer, create=False) as gallery:
        assert len(gallery) == IDENTITIES - 1 and "person-00" not in gallery
        assert gallery.metadata("person-05") == {"index": 5}
        after = gallery.identify(faces[5, 1], occlusion=[20, 21]).matches
        kept = [(m.identity, round(m.score, 6)) for m in before if m.identity != "person-00"]
        assert [(m.identity, round(m.score, 6)) for m in after][: len(kept)] == kept


def test_enrollment_errors_and_empty_gallery(place, recognizer, faces):
    with Gallery.open(place("g"), recognizer) as gallery:
        assert gallery.identify(faces[0, 0]).matches == []
        gallery.enroll("a", faces[0, :2])
        with pytest.raises(DuplicateIdentityError, match="already enrolled"):
            gallery.enroll("a", faces[1, 0])
        gallery.enroll("a", faces[1, 0], replace=True)
        assert gallery.stats().faces == 1
        assert gallery.identify(faces[1, 1], k=1).matches[0].identity == "a"
        with pytest.raises(UnknownIdentityError, match="'b' is not enrolled"):
            gallery.remove("b")
        for bad in ("", "  ", 7, "x" * 300):
            with pytest.raises((ValueError, TypeError), match="identity"):
                gallery.enroll(bad, faces[0, 0])
        with pytest.raises(ValueError, match="JSON"):
            gallery.enroll("c", faces[0, 0], metadata={"x": float("nan")})
        for k in (0, -1, 1.5, "3"):
            with pytest.raises(ValueError, match="k must be"):
                gallery.identify(faces[0, 0], k=k)
        with pytest.raises(ValueError, match="threshold"):
            gallery.identify(faces[0, 0], threshold=2.0)
        assert all(m.score >= 0.99 for m in gallery.identify(faces[1, 0], threshold=0.99).matches)
    with pytest.raises(GalleryError, match="already exists"):
        Gallery.create(place("g"), recognizer)
    with pytest.raises(GalleryError, match="does not exist|holds no gallery"):
        Gallery.open(place("absent"), recognizer, create=False)


def test_a_gallery_of_another_model_is_refused(place, recognizer, faces, tiny_bundle):
    with Gallery.open(place("g"), recognizer) as gallery:
        gallery.enroll("a", faces[0, 0])
    with (
        Recognizer.open(tiny_bundle, backend="onnxruntime") as other,
        pytest.raises(GalleryError, match="enrolled with another model") as refused,
    ):
        Gallery.open(place("g"), other)
    assert "model (FP32 file SHA-256)" in str(refused.value) and "re-enroll" in str(refused.value)


def test_damaged_files_are_refused_and_damaged_faces_left_out_then_repaired(tmp_path, recognizer, faces):
    with _enrolled(tmp_path / "g.db", recognizer, faces) as gallery:
        gallery.close()
    data = (tmp_path / "g.db").read_bytes()
    (tmp_path / "truncated.db").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    for name in ("truncated.db", "garbage.db"):
        with pytest.raises(GalleryError, match=name):
            Gallery.open(tmp_path / name, recognizer, create=False)
    import sqlite3

    db = sqlite3.connect(tmp_path / "g.db")
    blob = bytearray(db.execute("SELECT features FROM faces WHERE id = 3").fetchone()[0])
    blob[100] ^= 0xFF
    db.execute("UPDATE faces SET features = ? WHERE id = 3", (bytes(blob),))
    db.commit()
    (owner,) = db.execute(
        "SELECT i.name FROM faces f JOIN identities i ON i.id = f.identity_id WHERE f.id = 3"
    ).fetchone()
    db.close()
    with Gallery.open(tmp_path / "g.db", recognizer, create=False) as gallery:  # opens, the damaged face left out
        assert [(d.face_id, d.identity, d.reason) for d in gallery.damaged] == [(3, owner, "checksum mismatch")]
        assert gallery.stats().damaged == 1 and gallery.stats().faces == IDENTITIES - 1
        assert all(m.face_id != 3 for m in gallery.identify(faces[0][0], k=IDENTITIES).matches)
        removed, emptied = gallery.repair()
        assert [d.face_id for d in removed] == [3] and emptied == [owner] and gallery.damaged == []
    with Gallery.open(tmp_path / "g.db", recognizer, create=False) as gallery:
        assert gallery.damaged == [] and gallery.stats().faces == IDENTITIES - 1 and owner not in gallery


def test_enroll_batch_is_one_transaction_and_scores_as_single_enrollments(place, recognizer, faces):
    from pdsn.runtime.gallery import Enrollment

    features = recognizer.features(faces[:, 0])
    with (
        Gallery.open(place("one"), recognizer) as single,
        Gallery.open(place("batch"), recognizer) as bulk,
    ):
        for i in range(IDENTITIES):
            single.enroll_features(f"p{i}", features[i : i + 1])
        bulk.enroll("p0", faces[0, 0])
        batch = [Enrollment(f"p{i}", features[i : i + 1], metadata={"i": i}) for i in range(IDENTITIES)]
        with pytest.raises(DuplicateIdentityError):
            bulk.enroll_batch(batch)
        assert len(bulk) == 1  # all or none
        bulk.enroll_batch(batch, replace=True)
        assert len(bulk) == IDENTITIES and bulk.metadata("p3") == {"i": 3}
        probe = recognizer.features(faces[4, 1])
        one = single.identify_features(probe, occlusion=[7], k=3)[0].matches
        many = bulk.identify_features(probe, occlusion=[7], k=3)[0].matches
        assert [m.identity for m in one] == [m.identity for m in many]
        assert np.allclose([m.score for m in one], [m.score for m in many], atol=1e-6)
        with pytest.raises(ValueError, match="repeat"):
            bulk.enroll_batch([batch[0], batch[0]])


def test_threads_enroll_and_identify_at_once(place, recognizer, faces):
    errors = []
    with Gallery.open(place("g"), recognizer) as gallery:
        gallery.enroll("seed", faces[0, 0])

        def enroll(i):
            try:
                gallery.enroll(f"t-{i:02d}", faces[i % IDENTITIES, 0])
            except Exception as exc:
                errors.append(exc)

        def identify(i):
            try:
                assert gallery.identify(faces[i % IDENTITIES, 1], occlusion=[i % 25], k=2).matches
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=f, args=(i,)) for i in range(20) for f in (enroll, identify)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
        assert len(gallery) == 21 and gallery.stats().faces == 21


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pdsn.runtime import Recognizer
    from pdsn.runtime.gallery import Gallery
    from pdsn.train.synthetic import SyntheticFaces

    bundle, path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    images, _ = SyntheticFaces(40, 4, seed=5).generate()
    with Recognizer.open(bundle, backend="onnxruntime", precision="fp32") as rec, Gallery.open(path, rec) as gallery:
        if mode == "one":
            gallery.enroll("from-another-process", images[:1])
            print("enrolled", flush=True)
        else:
            for i in range(40):
                gallery.enroll(f"bulk-{i:02d}", images[4 * i : 4 * i + 4])
                print(f"acked bulk-{i:02d}", flush=True)
    """
)


def test_a_second_process_sees_and_adds_to_the_same_gallery(place, demo_bundle, recognizer, faces):
    with _enrolled(place("g"), recognizer, faces) as gallery:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(demo_bundle), str(place("g")), "one"],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert child.returncode == 0, child.stderr
        assert len(gallery) == IDENTITIES + 1
        names = {m.identity for m in gallery.identify(faces[0, 1], k=IDENTITIES + 1).matches}
        assert "from-another-process" in names


def test_kill_9_during_a_large_enrollment_loses_nothing_acknowledged(place, demo_bundle, recognizer):
    path = place("g")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(demo_bundle), str(path), "bulk"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    deadline = time.monotonic() + 240
    while len(acked) < 6 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acked.append(line.split()[-1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    assert len(acked) >= 6, child.stderr.read()
    with Gallery.open(path, recognizer, create=False) as gallery:
        names = gallery.identities()
        assert set(acked) <= set(names)
        assert gallery.stats().faces == 4 * len(names), "an identity was half-enrolled"


def test_an_hnsw_index_finds_the_exact_matches_of_warm_patterns(tmp_path, recognizer, faces):
    pytest.importorskip("usearch", reason='needs pip install "pdsn-deploy[ann]"')
    sunglasses = list(SUNGLASSES_CELLS)
    with (
        _enrolled(tmp_path / "g.db", recognizer, faces, feature_dtype="float32") as exact,
        Gallery.open(tmp_path / "g.db", recognizer, ann_min_faces=5) as indexed,
    ):
        indexed.warm()
        assert indexed.stats().indexes == 3 and indexed.stats().index_bytes > 0  # none, sunglasses, lower face
        for i in range(IDENTITIES):
            probe, _ = _sunglasses(faces[i, 1], seed=i)
            want = exact.identify(probe, occlusion=sunglasses, k=3).matches
            got = indexed.identify(probe, occlusion=sunglasses, k=3).matches
            assert [(m.identity, m.face_id) for m in got] == [(m.identity, m.face_id) for m in want]
            assert np.allclose([m.score for m in got], [m.score for m in want], atol=1e-6)  # scored exactly
        probes = [_sunglasses(faces[i, 1], seed=i)[0] for i in range(3)]
        many = indexed.identify_many(probes, occlusion=[sunglasses] * 3, k=2)
        assert [[m.face_id for m in r.matches] for r in many] == [
            [m.face_id for m in r.matches] for r in exact.identify_many(probes, occlusion=[sunglasses] * 3, k=2)
        ]
        indexed.enroll("late", faces[0, 2])  # after the index was built: it is extended at the next search
        assert indexed.identify(faces[0, 2], occlusion=sunglasses, k=1).matches[0].identity == "late"
        indexed.remove("late")  # its keys leave the indexes, which stay in use
        indexed.remove("person-01")  # rows after its faces shift; both galleries share the file
        assert indexed.stats().indexes == 3
        assert indexed.identify(faces[0, 2], occlusion=sunglasses, k=1).matches[0].identity == "person-00"
        for i in range(IDENTITIES):
            probe, _ = _sunglasses(faces[i, 1], seed=i)
            want = exact.identify(probe, occlusion=sunglasses, k=3).matches
            got = indexed.identify(probe, occlusion=sunglasses, k=3).matches
            assert [(m.identity, m.face_id) for m in got] == [(m.identity, m.face_id) for m in want]
            assert "person-01" not in {m.identity for m in got}
    with pytest.raises(ValueError, match="ann_min_faces"):
        Gallery.open(tmp_path / "g.db", recognizer, ann_min_faces=0)


def _foreign_database(path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('someone')")
    sqlite3.connect(path).close()


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (_foreign_database, "another application's SQLite database (tables: users)"),
        (lambda path: path.write_bytes(b""), "an empty (0-byte) file"),
        (lambda path: path.write_text("name,face\n"), "a file that is not an SQLite database"),
    ],
)
def test_a_file_that_is_not_a_gallery_is_refused_untouched(recognizer, tmp_path, make, found):
    path = tmp_path / "app.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(GalleryError, match=re.escape(f"{path} is {found}, not a pdsn gallery; it was left untouched")):
        Gallery.open(path, recognizer, create=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal or -shm beside it


def test_two_writers_enrolling_one_new_name_at_once_give_one_duplicate(tmp_path, recognizer, faces):
    """Two processes (here two connections) both find the name free, then both insert: the loser must be
    told it is a duplicate (409 in the service), not that the gallery failed."""
    import sqlite3

    path = tmp_path / "shared.db"
    with Gallery.open(path, recognizer, create=True) as first, Gallery.open(path, recognizer) as second:
        features = recognizer.features(faces[0][:1])
        holder = sqlite3.connect(path, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # both enrollments queue behind this writer
        outcomes: list[object] = []

        def enroll(gallery) -> None:
            try:
                outcomes.append(gallery.enroll_features("bob", features))
            except Exception as exc:  # recorded, asserted below
                outcomes.append(exc)

        threads = [threading.Thread(target=enroll, args=(g,)) for g in (first, second)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join(30)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) == 2 and len(errors) == 1, outcomes
    assert isinstance(errors[0], DuplicateIdentityError), repr(errors[0])


def test_the_memory_budgets_are_the_callers_and_checked(tmp_path, recognizer, faces):
    with Gallery.open(tmp_path / "g.db", recognizer, cache_bytes=1 << 20, slice_bytes=1) as gallery:
        gallery.enroll("alice", faces[0][:1])
        for cells in ([10, 11], [20, 21], [3]):
            gallery.identify(faces[0][0], occlusion=cells)
        assert gallery.slice_budget == 1 and len(gallery._slices) == 1  # one pattern's slice at most
        assert gallery.stats().cache.budget_bytes == 1 << 20
    for name in ("cache_bytes", "slice_bytes"):
        with pytest.raises(ValueError, match=name):
            Gallery.open(tmp_path / "h.db", recognizer, **{name: 0})


def test_searches_never_wait_for_a_writer(tmp_path, recognizer, faces):
    """Another process holds the write lock: an enrollment here waits for it, identification does not."""
    import sqlite3

    path = tmp_path / "busy.db"
    with Gallery.open(path, recognizer, create=True) as gallery:
        gallery.enroll("alice", faces[0][:1])
        holder = sqlite3.connect(path, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        waiting = threading.Thread(target=lambda: gallery.enroll("bob", faces[1][:1]))
        waiting.start()
        time.sleep(0.3)  # the enrollment now waits for the lock
        started = time.perf_counter()
        found = gallery.identify(faces[0][1], k=1)
        assert time.perf_counter() - started < 1.0 and found.matches[0].identity == "alice"
        assert waiting.is_alive() and "bob" not in gallery and len(gallery) == 1
        holder.rollback()
        holder.close()
        waiting.join(30)
        assert "bob" in gallery and gallery.identify(faces[1][1], k=1).matches[0].identity == "bob"
        assert gallery.stats().faces == 2  # taken in once, by the enrollment or by a search's look at the store


def test_a_new_pattern_is_computed_outside_the_search_lock_and_bounded(tmp_path, recognizer, faces, monkeypatch):
    """While one probe's new pattern is computed, a probe under a cached pattern is answered; more new
    patterns than the gallery takes at once and waiting are refused with PatternBusyError (a 503)."""
    from pdsn.model.folded_head import HeadSlice
    from pdsn.runtime.gallery import PatternBusyError

    with Gallery.open(tmp_path / "g.db", recognizer, create=True, pattern_workers=1, pattern_queue=0) as gallery:
        for i in range(IDENTITIES):
            gallery.enroll(f"person-{i:02d}", faces[i, :1])
        gallery.identify(faces[0][1], k=1)  # the unmasked pattern, now cached
        apply = HeadSlice.apply
        computing = threading.Event()

        def slow_apply(self, features, base, head):
            if len(features) > 1:  # the gallery's product, not a probe's own embedding
                computing.set()
                time.sleep(1.0)
            return apply(self, features, base, head)

        monkeypatch.setattr(HeadSlice, "apply", slow_apply)
        outcomes: list[object] = []
        worker = threading.Thread(target=lambda: outcomes.append(gallery.identify(faces[1][0], occlusion=[3, 4], k=1)))
        worker.start()
        assert computing.wait(10)
        started = time.perf_counter()
        cached = gallery.identify(faces[2][0], k=1)
        assert time.perf_counter() - started < 0.5 and cached.matches[0].identity == "person-02"
        with pytest.raises(PatternBusyError, match=r"computing 1 new occlusion pattern\(s\) already"):
            gallery.identify(faces[3][0], occlusion=[20, 21], k=1)
        worker.join(30)
        assert outcomes[0].matches[0].identity == "person-01"
    for value in (0, -1, True):
        with pytest.raises(ValueError, match="pattern_"):
            Gallery.open(tmp_path / "h.db", recognizer, pattern_workers=value)


@pytest.mark.parametrize("backing", ["sqlite", "postgresql"])
def test_opening_a_gallery_holds_its_arrays_not_a_second_copy(recognizer, tmp_path, backing, request):
    """The store is read a chunk at a time into arrays sized once: the peak while opening is about the arrays
    themselves (1.22 times here; 2.5 times before, with every row read at once and the arrays grown by doubling)."""
    import tracemalloc

    from pdsn.runtime.gallery import Enrollment

    location = tmp_path / "big.db" if backing == "sqlite" else request.getfixturevalue("postgres").database()
    width = recognizer.folded_head.feature_size
    seeded = np.random.default_rng(5).standard_normal((3000, width)).astype(np.float32)
    cells = [None, [10, 11, 12, 13]]
    with Gallery.open(location, recognizer, create=True) as gallery:
        gallery.enroll_batch([Enrollment(f"p{i:04d}", seeded[i : i + 1], cells[i % 2]) for i in range(len(seeded))])
    tracemalloc.start()
    try:
        with Gallery.open(location, recognizer) as gallery:
            _, peak = tracemalloc.get_traced_memory()
            held = sum(group.features.nbytes + group.base.nbytes for group in gallery._groups.values())
            assert gallery.stats().faces == 3000 and len(gallery._groups) == 2
    finally:
        tracemalloc.stop()
    print(f"\n{backing}: arrays {held / 2**20:.1f} MiB, peak while opening {peak / 2**20:.1f} MiB")
    assert peak < 1.3 * held
