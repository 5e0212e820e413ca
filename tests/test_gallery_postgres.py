"""The gallery on PostgreSQL: replicas sharing one database, concurrent writers, and a server lost mid-run.

The gallery's own test suite (tests/test_gallery.py) runs against SQLite and PostgreSQL alike;
these are the behaviours only a shared database has.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from postgres_harness import PostgresServer, server_binaries

from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime.gallery import DuplicateIdentityError, Gallery, GalleryError
from pdsn.triton_repo.local_server import free_port

VISIBLE_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def features(tiny_recognizer):
    return tiny_recognizer.features(seeded_faces(40, seed=31))


def _names_seen(gallery: Gallery, probe: np.ndarray) -> set[str]:
    return {m.identity for m in gallery.identify_features(probe[None], k=100)[0].matches}


def _within(seconds: float, condition) -> float:
    """Seconds until ``condition()`` held (polled), or fails after ``seconds``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_an_enrollment_acknowledged_by_one_replica_is_identifiable_through_another(postgres, tiny_recognizer, features):
    url = postgres.database()
    with Gallery.open(url, tiny_recognizer) as first, Gallery.open(url, tiny_recognizer) as second:
        first.enroll_features("alice", features[:1])
        _within(VISIBLE_WITHIN_S, lambda: _names_seen(second, features[1]) == {"alice"})
        first.enroll_features("bob", features[1:2])
        waited = _within(VISIBLE_WITHIN_S, lambda: "bob" in _names_seen(second, features[1]))
        assert waited < VISIBLE_WITHIN_S and len(second) == 2
        match = second.identify_features(features[1 : 1 + 1], k=1)[0].matches[0]
        assert match.identity == "bob" and match.score == pytest.approx(1.0, abs=1e-3)
        second.remove("alice")
        _within(VISIBLE_WITHIN_S, lambda: _names_seen(first, features[0]) == {"bob"})
        first.enroll_features("bob", features[2:3], replace=True)
        _within(
            VISIBLE_WITHIN_S, lambda: second.identify_features(features[2 : 2 + 1], k=1)[0].matches[0].score > 0.999
        )
        assert second.stats().faces == 1


def test_concurrent_enrollments_from_two_replicas_lose_nothing(postgres, tiny_recognizer, features):
    url = postgres.database()
    errors: list[BaseException] = []
    with Gallery.open(url, tiny_recognizer) as first, Gallery.open(url, tiny_recognizer) as second:

        def enroll(gallery: Gallery, prefix: str) -> None:
            try:
                for i in range(15):
                    gallery.enroll_features(f"{prefix}-{i:02d}", features[i : i + 1])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=enroll, args=(g, p)) for g, p in ((first, "a"), (second, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors[:2]
        for gallery in (first, second):
            _within(VISIBLE_WITHIN_S, lambda g=gallery: len(_names_seen(g, features[0])) == 30)
            assert gallery.stats().faces == 30
    with Gallery.open(url, tiny_recognizer, create=False) as restarted:  # a replica that restarts reloads it all
        assert len(restarted) == 30 and restarted.stats().faces == 30


def test_one_new_name_enrolled_by_two_replicas_at_once(postgres, tiny_recognizer, features):
    url = postgres.database()
    with Gallery.open(url, tiny_recognizer) as first, Gallery.open(url, tiny_recognizer) as second:
        outcomes: list[object] = []
        barrier = threading.Barrier(2)

        def enroll(gallery: Gallery, row: int, replace: bool) -> None:
            barrier.wait()
            try:
                outcomes.append(gallery.enroll_features("carol", features[row : row + 1], replace=replace))
            except DuplicateIdentityError as exc:
                outcomes.append(exc)

        for replace in (False, True):
            if "carol" in first:
                first.remove("carol")
            outcomes.clear()
            threads = [threading.Thread(target=enroll, args=(g, r, replace)) for g, r in ((first, 3), (second, 4))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            refused = [o for o in outcomes if isinstance(o, DuplicateIdentityError)]
            assert len(outcomes) == 2 and len(refused) == (0 if replace else 1)
            assert len(first) == 1 and len(second) == 1
            for gallery in (first, second):  # identification takes in the other replica's writes
                _within(VISIBLE_WITHIN_S, lambda g=gallery: _names_seen(g, features[0]) and g.stats().faces == 1)


def test_a_damaged_row_is_left_out_reported_and_repaired(postgres, tiny_recognizer, features):
    import psycopg

    url = postgres.database()
    with Gallery.open(url, tiny_recognizer) as gallery:
        gallery.enroll_features("dave", features[:1])
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE pdsn_faces SET base = overlay(base placing '\\x00ff'::bytea from 9 for 2)")
    with Gallery.open(url, tiny_recognizer, create=False) as gallery:
        assert [d.identity for d in gallery.damaged] == ["dave"] and gallery.stats().faces == 0
        removed, emptied = gallery.repair()
        assert [d.identity for d in removed] == ["dave"] and emptied == ["dave"] and "dave" not in gallery


def test_unreachable_database_names_the_url_without_its_password(tiny_recognizer):
    url = f"postgresql://pdsn:secret-word@127.0.0.1:{free_port()}/gallery"
    with pytest.raises(GalleryError, match="unreachable") as refused:
        Gallery.open(url, tiny_recognizer)
    assert "127.0.0.1" in str(refused.value) and "secret-word" not in str(refused.value)


def test_a_database_lost_mid_run_fails_enrollment_clearly_then_reconnects(tiny_recognizer, features):
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed here")
    with tempfile.TemporaryDirectory(prefix="pdsn-pg-lost-") as root:
        server = PostgresServer(Path(root), binaries)
        try:
            url = server.database()
            with Gallery.open(url, tiny_recognizer) as gallery, Gallery.open(url, tiny_recognizer) as other:
                gallery.enroll_features("erin", features[:1])
                server.stop("immediate")
                with pytest.raises(GalleryError, match="unreachable") as failed:
                    gallery.enroll_features("frank", features[1:2])
                assert "reconnects" in str(failed.value)
                # What is already in memory is still searchable while the database is away.
                assert _names_seen(gallery, features[0]) == {"erin"}
                server.start()
                gallery.enroll_features("frank", features[1:2])
                assert set(gallery.identities()) == {"erin", "frank"}
                # The other replica's listener reconnects and takes in what it may have missed.
                _within(10.0, lambda: _names_seen(other, features[0]) == {"erin", "frank"})
        finally:
            server.stop("immediate")


def test_two_servers_share_one_database(postgres, tiny_bundle, tmp_path):
    from serve_harness import ServerProcess, b64

    url = postgres.database()
    options = ("--backend", "onnxruntime", "--precision", "fp32", "--gallery", url)
    faces = seeded_faces(3, seed=44)
    with (
        ServerProcess(tiny_bundle, tmp_path / "a.log", *options) as first,
        ServerProcess(tiny_bundle, tmp_path / "b.log", *options) as second,
        httpx.Client(timeout=30.0) as http,
    ):
        created = http.post(f"{first.url}/v1/identities", json={"identity": "grace", "images": [b64(faces[0])]})
        assert created.status_code == 201, created.text

        def seen() -> bool:
            answer = http.post(f"{second.url}/v1/identify", json={"image": b64(faces[0]), "k": 3})
            return answer.status_code == 200 and [m["identity"] for m in answer.json()["matches"]] == ["grace"]

        assert _within(VISIBLE_WITHIN_S, seen) < VISIBLE_WITHIN_S
        listed = http.get(f"{second.url}/v1/identities").json()
        assert listed["identities"] == ["grace"] and listed["total"] == 1
