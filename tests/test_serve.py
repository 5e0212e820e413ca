"""`pdsn serve` as a client sees it: a real server on 127.0.0.1, the face API over httpx, /v2 over tritonclient.

Every answer is compared with the in-process runtime on the same bundle and backend. The module
starts one server (API keys on, small body and pixel limits) and reuses it.
"""

from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import pytest
from serve_harness import ServerProcess, b64, png

from pdsn.model.alignment import TEMPLATE_112X96
from pdsn.model.sample_faces import seeded_faces

KEY = "test-key-0123456789abcdef"
MAX_BODY = 1_500_000
MAX_PIXELS = 1_000_000
COSINE = 0.99999


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    keys = folder / "keys.txt"
    keys.write_text(f"# test keys\n{KEY}\nsecond-key-abcdef\n")
    options = (
        "--backend", "onnxruntime", "--precision", "fp32", "--max-batch", "8", "--max-delay-ms", "2",
        "--queue-size", "512", "--api-key-file", str(keys), "--max-body-bytes", str(MAX_BODY),
        "--max-pixels", str(MAX_PIXELS),
    )  # fmt: skip
    with ServerProcess(tiny_bundle, folder / "server.log", *options) as process:
        yield process


@pytest.fixture(scope="module")
def reference(tiny_recognizer):
    return tiny_recognizer


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def faces():
    return seeded_faces(12, seed=7)


def _close(got, expected) -> None:
    got, expected = np.asarray(got, dtype=np.float32), np.atleast_2d(expected)
    assert got.shape == expected.shape
    cosine = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= COSINE, cosine


def test_embed_equals_the_runtime_and_says_what_answered(client, reference, faces):
    occlusion = [[10, 11, 12, 13], [], [20, 21, 22, 23, 24]]
    answer = client.post("/v1/embed", json={"images": [b64(f) for f in faces[:3]], "occlusion": occlusion})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _close(body["embeddings"], reference.embed(faces[:3], occlusion=occlusion))
    assert body["occluded_cells"] == occlusion
    assert body["precision"] == "fp32" and body["model"].startswith("lresnet-ir")
    assert answer.headers["x-request-id"]


def test_a_request_larger_than_a_batch_is_split_and_answered_in_order(client, reference, faces):
    """12 faces (over max_batch 8, and a body parsed off the event loop) come back in the order sent."""
    cells = [[i % 25] for i in range(len(faces))]
    answer = client.post("/v1/embed", json={"images": [b64(f) for f in faces], "occlusion": cells})
    assert answer.status_code == 200, answer.text
    _close(answer.json()["embeddings"], reference.embed(faces, occlusion=cells))


def test_multipart_upload_equals_json(client, reference, faces):
    files = [("images", (f"{i}.png", png(face), "image/png")) for i, face in enumerate(faces[:2])]
    answer = client.post("/v1/embed", files=files, data={"occlusion": "[12]"})
    assert answer.status_code == 200, answer.text
    _close(answer.json()["embeddings"], reference.embed(faces[:2], occlusion=[12]))
    assert answer.json()["occluded_cells"] == [[12], [12]]


def test_photo_with_landmarks_is_aligned_as_the_runtime_aligns_it(client, reference, faces):
    photo = np.full((180, 160, 3), 90, np.uint8)
    photo[30:142, 40:136] = faces[0]
    points = (TEMPLATE_112X96 + [40, 30]).tolist()
    answer = client.post("/v1/embed", json={"images": [b64(photo)], "landmarks": [points]})
    assert answer.status_code == 200, answer.text
    _close(answer.json()["embeddings"], reference.embed([photo], landmarks=[np.array(points)]))


def test_verify_masks_both_faces_with_the_union(client, reference, faces):
    request = {"image_a": b64(faces[0]), "image_b": b64(faces[1]), "occlusion_b": [20, 21], "threshold": 0.2}
    answer = client.post("/v1/verify", json={**request, "occlusion_a": [3]})
    assert answer.status_code == 200, answer.text
    expected = reference.verify(faces[0], faces[1], [3], [20, 21], threshold=0.2)
    body = answer.json()
    assert abs(body["score"] - expected.score) < 1e-5
    assert body["match"] == expected.match and body["occluded_cells"] == [3, 20, 21]
    assert (
        client.post("/v1/verify", json={"image_a": request["image_a"], "image_b": request["image_a"]}).json()["match"]
        is None
    )


def test_tritonclient_gets_the_runtimes_embeddings_in_json_and_binary(server, reference, faces):
    import tritonclient.http as triton

    headers = {"Authorization": f"Bearer {KEY}"}
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("pdsn")
    meta = client.get_model_metadata("pdsn", headers=headers)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("image", "UINT8", [-1, 112, 96, 3]),
        ("occlusion", "FP32", [-1, 25]),
    ]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 512]}]
    occlusion = np.zeros((3, 25), np.float32)
    occlusion[0, [10, 11, 12, 13]] = occlusion[2, 24] = 1
    expected = reference.embed(faces[:3], occlusion=occlusion)
    for binary in (False, True):
        image = triton.InferInput("image", [3, 112, 96, 3], "UINT8")
        image.set_data_from_numpy(faces[:3], binary_data=binary)
        cells = triton.InferInput("occlusion", [3, 25], "FP32")
        cells.set_data_from_numpy(occlusion, binary_data=binary)
        wanted = [triton.InferRequestedOutput("embedding", binary_data=binary)]
        result = client.infer("pdsn", [image, cells], outputs=wanted, headers=headers, request_id=f"r{binary}")
        _close(result.as_numpy("embedding"), expected)
        assert result.get_response()["id"] == f"r{binary}"
    # No outputs named: tritonclient asks for binary_data_output.
    result = client.infer("pdsn", [image, cells], headers=headers)
    _close(result.as_numpy("embedding"), expected)
    with pytest.raises(triton.InferenceServerException, match="unknown model"):
        client.infer("other", [image, cells], headers=headers)


def test_32_concurrent_clients_each_get_their_own_answer(client, server, reference):
    """32 clients x 4 requests of 1-3 faces with random occlusion, over both APIs: nothing lost or mixed up."""
    import tritonclient.http as triton

    rng = np.random.default_rng(11)
    jobs = []
    for index in range(128):
        count = int(rng.integers(1, 4))
        images = seeded_faces(count, seed=1000 + index)
        cells = [sorted(rng.choice(25, int(rng.integers(0, 6)), replace=False).tolist()) for _ in range(count)]
        jobs.append((images, cells))
    answers: dict[int, np.ndarray] = {}
    request_ids, errors = [], []
    lock = threading.Lock()

    def work(worker: int) -> None:
        triton_client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60.0) as http:
                for index in range(worker, len(jobs), 32):
                    images, cells = jobs[index]
                    if index % 2:
                        reply = http.post("/v1/embed", json={"images": [b64(i) for i in images], "occlusion": cells})
                        reply.raise_for_status()
                        got = np.asarray(reply.json()["embeddings"], np.float32)
                        rid = reply.headers["x-request-id"]
                    else:
                        vectors = np.zeros((len(images), 25), np.float32)
                        for row, ids in enumerate(cells):
                            vectors[row, ids] = 1
                        image = triton.InferInput("image", list(images.shape), "UINT8")
                        image.set_data_from_numpy(images)
                        masks = triton.InferInput("occlusion", list(vectors.shape), "FP32")
                        masks.set_data_from_numpy(vectors)
                        got = triton_client.infer("pdsn", [image, masks], headers={"X-API-Key": KEY}).as_numpy(
                            "embedding"
                        )
                        rid = f"triton-{index}"
                    with lock:
                        assert index not in answers
                        answers[index] = got
                        request_ids.append(rid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    assert sorted(answers) == list(range(len(jobs))) and len(set(request_ids)) == len(request_ids)
    for index, (images, cells) in enumerate(jobs):
        _close(answers[index], reference.embed(images, occlusion=cells))
    metrics = client.get("/metrics").text
    assert 'pdsn_batcher_rejected_total{batcher="embedding"} 0.0' in metrics


def _bad_cases(face: np.ndarray) -> list[tuple[str, str, dict, int, str | None]]:
    good = b64(face)
    not_image = base64.b64encode(b"this is not an image file").decode()
    wrong_size = b64(np.zeros((100, 100, 3), np.uint8))
    bomb = b64(np.zeros((1200, 1000, 3), np.uint8))  # 1.2 MP, over the 1 MP limit; a few kB of PNG
    return [
        ("not base64", "/v1/embed", {"images": [good, "###"]}, 422, "images[1]"),
        ("not an image", "/v1/embed", {"images": [not_image]}, 422, "images[0]"),
        ("not a crop, no landmarks", "/v1/embed", {"images": [good, wrong_size]}, 422, "images[1]"),
        ("landmarks of a wrong shape", "/v1/embed", {"images": [good], "landmarks": [[[1, 2]]]}, 422, "landmarks[0]"),
        (
            "landmarks off the image",
            "/v1/embed",
            {"images": [good], "landmarks": [[[900, 900]] * 5]},
            422,
            "landmarks[0]",
        ),
        ("landmarks for other images", "/v1/embed", {"images": [good], "landmarks": []}, 422, "landmarks"),
        ("cell 25", "/v1/embed", {"images": [good], "occlusion": [3, 25]}, 422, "occlusion[1]"),
        ("cells for other images", "/v1/embed", {"images": [good], "occlusion": [[1], [2]]}, 422, "occlusion"),
        ("cells as text", "/v1/embed", {"images": [good], "occlusion": "eyes"}, 422, "occlusion"),
        ("no images", "/v1/embed", {"occlusion": [1]}, 422, "images"),
        ("empty batch", "/v1/embed", {"images": []}, 422, "images"),
        ("unknown field", "/v1/embed", {"images": [good], "occlusions": [1]}, 422, "occlusions"),
        ("threshold above 1", "/v1/verify", {"image_a": good, "image_b": good, "threshold": 2}, 422, "threshold"),
        (
            "verify bad cell",
            "/v1/verify",
            {"image_a": good, "image_b": good, "occlusion_b": [-1]},
            422,
            "occlusion_b[0]",
        ),
        ("verify image_b", "/v1/verify", {"image_a": good, "image_b": wrong_size}, 422, "image_b"),
        ("decompression bomb", "/v1/embed", {"images": [bomb]}, 413, "images[0]"),
        ("no estimator for auto", "/v1/embed", {"images": [good], "occlusion": "auto"}, 422, "occlusion"),
    ]


def test_every_bad_input_is_a_4xx_naming_the_field(client, faces):
    for name, route, body, status, field in _bad_cases(faces[0]):
        answer = client.post(route, json=body)
        assert answer.status_code == status, (name, answer.text)
        error = answer.json()
        assert error["request_id"] == answer.headers["x-request-id"], name
        assert error.get("field") == field, (name, error)
        assert field is None or field in error["error"], (name, error)


def test_malformed_requests_are_not_500s(client, faces):
    assert (
        client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )
    answer = client.post("/v1/embed", content=b"images=1", headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and "application/json" in answer.json()["error"]
    assert (
        client.post("/v1/embed", json={"images": [b64(faces[0])]}, headers={"X-Deadline-Ms": "soon"}).json()["field"]
        == "X-Deadline-Ms"
    )
    over = client.post("/v1/embed", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    assert over.status_code == 413 and f"{MAX_BODY:,}" in over.json()["error"]
    assert client.get("/v1/nothing-here").status_code == 404
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/pdsn/versions/7").status_code == 404
    assert client.post("/v1/identify", json={"image": b64(faces[0])}).status_code == 404  # no gallery here


def test_v2_protocol_errors_are_400s_with_a_message(client, faces):
    image = faces[:1]
    header = {"name": "image", "datatype": "UINT8", "shape": [1, 112, 96, 3]}

    def infer(body: dict | bytes, **headers) -> httpx.Response:
        if isinstance(body, dict):
            return client.post("/v2/models/pdsn/infer", json=body, headers=headers)
        return client.post("/v2/models/pdsn/infer", content=body, headers=headers)

    ok = infer({"inputs": [{**header, "data": image.ravel().tolist()}]})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    cases = [
        {"inputs": [{**header, "datatype": "FP32", "data": image.ravel().tolist()}]},
        {"inputs": [{**header, "shape": [1, 112, 96, 3], "data": [1, 2, 3]}]},
        {"inputs": [{**header, "shape": [1, 96, 112, 3], "data": image.ravel().tolist()}]},
        {"inputs": [{**header, "data": (image.ravel().astype(int) + 300).tolist()}]},
        {
            "inputs": [
                {**header, "data": image.ravel().tolist()},
                {"name": "mask", "datatype": "FP32", "shape": [1], "data": [0]},
            ]
        },
        {
            "inputs": [
                {**header, "data": image.ravel().tolist()},
                {"name": "occlusion", "datatype": "FP32", "shape": [1, 25], "data": [0.5] * 25},
            ]
        },
        {"inputs": [{**header, "data": image.ravel().tolist()}], "outputs": [{"name": "logits"}]},
        {"inputs": []},
    ]
    for body in cases:
        answer = infer(body)
        assert answer.status_code == 400, (body.get("outputs"), answer.text)
        assert answer.json()["error"]
    header_json = json.dumps({"inputs": [{**header, "parameters": {"binary_data_size": image.nbytes}}]}).encode()
    short = infer(header_json + image.tobytes()[:-5], **{"Inference-Header-Content-Length": str(len(header_json))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    assert infer(b"\xff\x00", **{"content-type": "application/json"}).status_code == 400


def test_api_keys_guard_everything_but_health_and_docs(server, faces):
    body = {"images": [b64(faces[0])]}
    with httpx.Client(base_url=server.url, timeout=30.0) as anonymous:
        missing = anonymous.post("/v1/embed", json=body)
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.post("/v1/embed", json=body, headers={"X-API-Key": KEY + "x"})
        assert wrong.status_code == 401 and "not accepted" in wrong.json()["error"]
        assert anonymous.post("/v1/embed", json=body, headers={"Authorization": "Bearer second-key-abcdef"}).is_success
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/v2/models/pdsn").status_code == 401
        for open_route in ("/v2/health/live", "/v2/health/ready", "/v2/models/pdsn/ready", "/openapi.json", "/docs"):
            assert anonymous.get(open_route).status_code == 200, open_route


def test_metrics_and_the_access_log(client, server, faces):
    answer = client.post("/v1/embed", json={"images": [b64(faces[0])]}, headers={"X-Request-Id": "trace-42"})
    assert answer.headers["x-request-id"] == "trace-42"
    assert httpx.post(f"{server.url}/v1/embed", json={}).status_code == 401  # counted under its route
    text = client.get("/metrics").text
    for line in (
        'pdsn_http_requests_total{method="POST",route="/v1/embed",status="200"}',
        'pdsn_http_requests_total{method="POST",route="/v1/embed",status="401"}',
        'pdsn_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/v1/embed",status="200"}',
        'pdsn_batcher_batch_size_bucket{batcher="embedding",le="8.0"}',
        "pdsn_batcher_queue_depth",
        "pdsn_batcher_timeouts_total",
        "pdsn_ready 1.0",
    ):
        assert line in text, line
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "trace-42"]
    assert len(mine) == 1 and mine[0]["route"] == "/v1/embed" and mine[0]["status"] == 200 and mine[0]["ms"] > 0


def test_openapi_documents_the_routes_and_both_body_encodings(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/verify", "/v1/identify", "/v1/identities", "/v2/models/{name}/infer", "/metrics"} <= set(
        spec["paths"]
    )
    content = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert content["multipart/form-data"]["schema"]["properties"]["images"]["items"]["format"] == "binary"


def test_inference_is_authenticated_counted_logged_and_documented_like_every_route(client, server, faces):
    """The inference routes are answered ahead of FastAPI's router; nothing a client or operator sees differs."""
    header = {"name": "image", "datatype": "UINT8", "shape": [1, 112, 96, 3], "data": faces[0].ravel().tolist()}
    body = {"inputs": [header]}
    answer = client.post("/v2/models/pdsn/infer", json=body, headers={"X-Request-Id": "infer-7"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "infer-7"
    assert client.post("/v2/models/pdsn/versions/1/infer", json=body).status_code == 200
    other_version = client.post("/v2/models/pdsn/versions/2/infer", json=body)
    assert other_version.status_code == 404 and other_version.json()["field"] == "version"
    assert client.post("/v2/models/other/infer", json=body).json()["field"] == "name"
    wrong_method = client.get("/v2/models/pdsn/infer")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "send POST" in wrong_method.json()["error"] and wrong_method.json()["request_id"]
    assert httpx.post(f"{server.url}/v2/models/pdsn/infer", json=body).status_code == 401
    text = client.get("/metrics").text
    for status in (200, 401, 404, 405):
        method = "GET" if status == 405 else "POST"
        assert (
            f'pdsn_http_requests_total{{method="{method}",route="/v2/models/{{name}}/infer",status="{status}"}}' in text
        )
    assert 'route="/v2/models/{name}/versions/{version}/infer",status="200"' in text
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    (mine,) = [line for line in lines if line["request_id"] == "infer-7"]
    assert mine["route"] == "/v2/models/{name}/infer" and mine["status"] == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = spec["paths"][path]["post"]
        assert {"application/json", "application/octet-stream"} <= set(operation["requestBody"]["content"])
        assert {"200", "400", "429", "504"} <= set(operation["responses"])
    assert spec["components"]["schemas"]["ErrorResponse"]
