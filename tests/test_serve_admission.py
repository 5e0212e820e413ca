"""A request is admitted whole or not at all: more faces than the queue ever holds is a 413 naming the limit,
at once and every time; a request that fits is answered, never sometimes refused."""

from __future__ import annotations

import httpx
import pytest
from serve_harness import ServerProcess, b64

from pdsn.model.sample_faces import seeded_faces

QUEUE = 4


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-admission")
    options = ("--backend", "onnxruntime", "--max-batch", "2", "--queue-size", str(QUEUE), "--max-delay-ms", "1")
    server = ServerProcess(tiny_bundle, folder / "server.log", *options, "--gallery", str(folder / "g.db"))
    with server, httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http


@pytest.mark.parametrize("route", ["/v1/embed", "/v1/identities"])
def test_more_faces_than_the_queue_holds_is_413_every_time(client, route):
    faces = [b64(face) for face in seeded_faces(QUEUE + 1, seed=5)]
    for attempt in range(5):
        extra = {"identity": f"too-many-{attempt}"} if route == "/v1/identities" else {}
        answer = client.post(route, json={"images": faces, **extra})
        assert answer.status_code == 413 and answer.json()["field"] == "images", answer.text
        assert f"more than this server's queue ever holds ({QUEUE}" in answer.json()["error"]
        assert "retry-after" not in answer.headers


def test_a_request_that_fits_is_answered_every_time(client):
    faces = [b64(face) for face in seeded_faces(QUEUE, seed=6)]
    for _ in range(10):
        answer = client.post("/v1/embed", json={"images": faces})
        assert answer.status_code == 200 and len(answer.json()["embeddings"]) == QUEUE
