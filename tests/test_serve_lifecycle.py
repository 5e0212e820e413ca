"""`pdsn serve` under load and at its edges: 429 and recovery, deadlines (504), SIGTERM drain, load failure, bugs."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serve_harness import ServerProcess, b64

from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import Recognizer


@pytest.fixture(scope="module")
def slow(tiny_bundle, tmp_path_factory):
    """Batches of 4 faces that wait 1 s to fill (long enough for a loaded machine to send a second request
    meanwhile), a queue of 4 faces, and a default deadline of 200 ms."""
    options = (
        "--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "4", "--queue-size", "4",
        "--max-delay-ms", "1000", "--deadline-ms", "200",
    )  # fmt: skip
    with ServerProcess(tiny_bundle, tmp_path_factory.mktemp("slow") / "server.log", *options) as process:
        yield process


def _embed(url: str, count: int, seed: int, **headers) -> httpx.Response:
    body = {"images": [b64(face) for face in seeded_faces(count, seed=seed)]}
    return httpx.post(f"{url}/v1/embed", json=body, headers=headers, timeout=30.0)


def _wait_for_metric(url: str, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in httpx.get(f"{url}/metrics").text:
            return
        time.sleep(0.01)
    pytest.fail(f"the server's metrics never showed {line!r}")


def test_a_full_queue_answers_429_with_retry_after_then_recovers(slow):
    patient = {"X-Deadline-Ms": "5000"}
    first: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: first.append(_embed(slow.url, 3, 1, **patient)))
    waiting.start()
    _wait_for_metric(
        slow.url, 'pdsn_batcher_queue_depth{batcher="embedding"} 1.0'
    )  # 3 faces wait for the batch to fill
    refused = _embed(slow.url, 2, 2, **patient)
    waiting.join()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "queue" in refused.json()["error"]
    assert first[0].status_code == 200
    # A burst of 3-face requests: one fits at a time, the rest are refused at once, none is lost.
    burst: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: burst.append(_embed(slow.url, 3, s, **patient).status_code))
        for s in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(burst)) == [200, 429] and len(burst) == 8
    assert all(_embed(slow.url, 1, 9, **patient).status_code == 200 for _ in range(3))  # recovered
    metrics = httpx.get(f"{slow.url}/metrics").text
    assert (
        'route="/v1/embed",status="429"' in metrics
        and 'pdsn_batcher_rejected_total{batcher="embedding"} 0.0' not in metrics
    )


def test_a_request_past_its_deadline_is_504(slow):
    for headers in ({}, {"X-Deadline-Ms": "50"}):  # the server's default (200 ms), then the client's
        time.sleep(1.1)  # the batcher is idle: a lone face waits the whole second for its batch to fill
        late = _embed(slow.url, 1, 3, **headers)
        assert late.status_code == 504 and "deadline" in late.json()["error"], headers
        assert late.elapsed.total_seconds() < 0.9, headers  # answered at its deadline, before the batch ran
    import tritonclient.http as triton

    time.sleep(1.1)
    client = triton.InferenceServerClient(slow.url.removeprefix("http://"))
    image = triton.InferInput("image", [1, 112, 96, 3], "UINT8")
    image.set_data_from_numpy(seeded_faces(1, seed=6))
    with pytest.raises(triton.InferenceServerException, match="deadline") as late:
        client.infer("pdsn", [image], timeout=50_000)  # Triton's request timeout, in microseconds
    assert late.value.status() == "504"
    time.sleep(1.1)  # the batcher skips the abandoned requests
    assert _embed(slow.url, 4, 5).status_code == 200  # a full batch runs at once
    assert "pdsn_batcher_timeouts_total" in httpx.get(f"{slow.url}/metrics").text


def test_sigterm_answers_every_request_in_flight_then_exits_0(tiny_bundle, tmp_path):
    # A lone batch waits 2 s to fill: the 8 requests are all in flight when SIGTERM arrives.
    options = ("--backend", "onnxruntime", "--max-batch", "16", "--max-delay-ms", "2000", "--deadline-ms", "30000")
    server = ServerProcess(tiny_bundle, tmp_path / "server.log", *options).start()
    try:
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda s=s: answers.append(_embed(server.url, 1, s).status_code)) for s in range(8)
        ]
        for thread in threads:
            thread.start()
        _wait_for_metric(server.url, "pdsn_http_requests_in_flight 9.0")  # all 8 inside (the scrape is the 9th)
        assert answers == []
        assert server.terminate(timeout=30) == 0, server.logs()
        for thread in threads:
            thread.join()
        assert answers == [200] * 8
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live")
        assert "Shutting down" in server.logs()
    finally:
        server.__exit__()


def test_a_bundle_that_cannot_load_stops_the_server_with_the_reason(tmp_path):
    broken = tmp_path / "not-a-bundle"
    broken.mkdir()
    server = ServerProcess(broken, tmp_path / "server.log", "--backend", "onnxruntime").start(wait=False)
    try:
        assert server.wait_exit(60) == 2
        assert "pdsn serve: error:" in server.logs() and "manifest" in server.logs()
    finally:
        server.__exit__()


def test_options_that_do_not_go_together_are_refused(tiny_bundle, tmp_path):
    server = ServerProcess(tiny_bundle, tmp_path / "server.log", "--ssl-certfile", "cert.pem").start(wait=False)
    try:
        assert server.wait_exit(60) == 2
        assert "--ssl-certfile and --ssl-keyfile go together" in server.logs()
    finally:
        server.__exit__()


def test_a_bug_is_a_bare_500_with_the_request_id(tiny_bundle, caplog):
    """An exception a route did not mean to raise: logged with its traceback, answered with the id only."""
    from pdsn.serve.access import AccessMiddleware
    from pdsn.serve.config import ServeConfig
    from pdsn.serve.metrics import ServeMetrics
    from pdsn.serve.state import ServeState

    async def broken(scope, receive, send):
        raise KeyError("internal detail that must not leak")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=AccessMiddleware(broken, ServeMetrics(state), []))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/v1/anything")

    state = ServeState(ServeConfig(bundle=tiny_bundle))
    answer = asyncio.run(call())
    state.close()
    assert answer.status_code == 500
    body = answer.json()
    assert body["request_id"] == answer.headers["x-request-id"] and "internal detail" not in answer.text
    assert body["request_id"] in body["error"]
    assert any("internal detail" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v1/embed", "/v2/models/pdsn/infer"])
def test_a_bug_in_any_route_is_one_logged_500_with_the_request_id(tiny_bundle, caplog, monkeypatch, path):
    """FastAPI's routes (health) and those served ahead of its router (embed, infer) alike."""
    from pdsn.serve.app import create_app
    from pdsn.serve.config import ServeConfig
    from pdsn.serve.state import ServeState

    def broken(self, *args):
        raise KeyError("internal detail that must not leak")

    app = create_app(ServeConfig(bundle=tiny_bundle))
    monkeypatch.setattr(ServeState, "readiness", broken)
    monkeypatch.setattr(ServeState, "serving", broken)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            if path.startswith("/v2/health"):
                return await client.get(path)
            return await client.post(path, json={"images": []})

    answer = asyncio.run(call())
    assert answer.status_code == 500, answer.text
    body = answer.json()
    assert body["request_id"] == answer.headers["x-request-id"] and "internal detail" not in answer.text
    logged = [r for r in caplog.records if "internal detail" in (r.exc_text or "")]
    assert len(logged) == 1 and body["request_id"] in logged[0].getMessage()


def test_not_ready_until_loaded(tiny_bundle):
    from pdsn.serve.config import ServeConfig
    from pdsn.serve.errors import ApiError
    from pdsn.serve.state import ServeState

    state = ServeState(ServeConfig(bundle=tiny_bundle, backend="onnxruntime"))
    try:
        ready, reason = state.readiness()
        assert not ready and "loading" in reason
        with pytest.raises(ApiError) as refused:
            state.serving()
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        state.load()
        assert state.readiness() == (True, "")
    finally:
        state.close()
    assert state.readiness()[0] is False


def test_a_lone_request_decodes_small_crops_on_the_event_loop_and_anything_else_on_the_pool():
    """The hand-off to the pool only costs a request that is alone; under load the loop never decodes."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from pdsn.serve.face_api import INLINE_DECODE_BYTES, _decoded

    def where(*args):
        return threading.current_thread().name

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:

        def decoded_on(in_flight: int, files: list[bytes], aligned: object) -> str:
            state = SimpleNamespace(requests_in_flight=in_flight, pool=pool)
            return asyncio.run(_decoded(state, files, aligned, where, files))

        crop = b"x" * 4000
        assert decoded_on(1, [crop, crop], None) == "MainThread"
        assert decoded_on(2, [crop], None).startswith("pool")  # another request in flight
        assert decoded_on(1, [crop], [[0.0, 0.0]] * 5).startswith("pool")  # a photo to align
        assert decoded_on(1, [b"x" * (INLINE_DECODE_BYTES + 1)], None).startswith("pool")


def test_auto_precision_serves_the_galleries_precision(quantized, tmp_path):
    """A bundle that gained INT8 after its gallery was enrolled at FP32: auto serves FP32, and opening the
    gallery at INT8 names the flag that works."""
    from pdsn.model.sample_faces import seeded_faces
    from pdsn.runtime.gallery import Gallery, GalleryError
    from pdsn.serve.config import ServeConfig
    from pdsn.serve.state import ServeState

    location = tmp_path / "g.db"
    fp32 = Recognizer.open(quantized, backend="onnxruntime", precision="fp32")
    with fp32, Gallery.open(location, fp32, create=True) as gallery:
        gallery.enroll("alice", seeded_faces(1, seed=3))
    with Recognizer.open(quantized, backend="onnxruntime") as auto:
        assert auto.precision == "int8"
        with pytest.raises(GalleryError, match=r"`pdsn serve --precision fp32`"):
            Gallery.open(location, auto)
    state = ServeState(ServeConfig(bundle=quantized, gallery=location, backend="onnxruntime"))
    try:
        state.load()
        assert state.recognizer.precision == "fp32" and "alice" in state.gallery
    finally:
        state.close()
