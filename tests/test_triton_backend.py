"""The ``triton`` backend against a real local Triton server serving the python kind of ``pdsn triton-repo``."""

from __future__ import annotations

import numpy as np
import pytest
from triton_harness import LocalTritonServer, server_env

from pdsn.model.bundle_format import BundleIntegrityError
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import Recognizer
from pdsn.runtime.backends import BackendUnavailableError
from pdsn.runtime.backends.triton_backend import TritonUnavailableError
from pdsn.runtime.gallery import Gallery
from pdsn.triton_repo.local_server import free_port
from pdsn.triton_repo.repository import RepositoryRequest, write_repository

pytest.importorskip("tritonclient.grpc", reason='the triton backend needs pip install "tritonclient[http,grpc]"')
PROTOCOLS = ("grpc", "http")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    env = server_env()
    work = tmp_path_factory.mktemp("triton")
    write_repository(RepositoryRequest(tiny_bundle, work / "repo", kind="python"))
    with LocalTritonServer(work / "repo", work / "server.log", env) as running:
        yield running


def _url(server: LocalTritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def _open(bundle, server: LocalTritonServer, protocol: str, **options) -> Recognizer:
    return Recognizer.open(
        bundle, backend="triton", precision="fp32", url=_url(server, protocol), protocol=protocol, **options
    )


@pytest.fixture(scope="module")
def local(tiny_bundle):
    with Recognizer.open(tiny_bundle, backend="onnxruntime", precision="fp32") as recognizer:
        yield recognizer


def _occlusion(count: int) -> np.ndarray:
    occlusion = np.zeros((count, 25), np.float32)
    occlusion[1, 12] = occlusion[2, 10:14] = occlusion[3, 20:25] = occlusion[4] = 1
    return occlusion


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_embeddings_and_features_equal_the_in_process_runtime(server, tiny_bundle, local, protocol):
    faces = seeded_faces(70)  # more than the server's max_batch_size (64): the Recognizer splits
    occlusion = np.resize(_occlusion(6), (70, 25))
    with _open(tiny_bundle, server, protocol) as remote:
        embeddings = remote.embed(faces, occlusion=occlusion)
        features = remote.features(faces[:9])
        info = remote.backend_info
        futures = [remote.submit(face, occlusion=row) for face, row in zip(faces[:16], occlusion[:16])]
        concurrent = np.stack([f.result(30) for f in futures])
    expected = local.embed(faces, occlusion=occlusion)
    assert _cosine_min(embeddings, expected) >= 0.99999
    assert np.abs(embeddings - expected).max() <= 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(concurrent, expected[:16], rtol=0, atol=1e-5 * np.abs(expected).max())
    expected_features = local.features(faces[:9])
    assert features.shape == expected_features.shape == (9, 32 * 7 * 6)
    assert np.abs(features - expected_features).max() <= 1e-5 * np.abs(expected_features).max()
    assert info["backend"] == "triton" and info["protocol"] == protocol and info["url"] == _url(server, protocol)


def test_a_gallery_identifies_through_triton_as_in_process(server, tiny_bundle, local, tmp_path):
    faces = seeded_faces(12, seed=3)
    probes, sunglasses = faces[:4], [10, 11, 12, 13]
    results = {}
    with _open(tiny_bundle, server, "grpc") as remote:
        for name, recognizer in (("local", local), ("triton", remote)):
            with Gallery.open(tmp_path / f"{name}.sqlite", recognizer, feature_dtype="float32") as gallery:
                for index in range(12):
                    gallery.enroll(f"person-{index}", faces[index])
                results[name] = gallery.identify_many(probes, occlusion=[sunglasses] * 4, k=3)
    for local_result, remote_result in zip(results["local"], results["triton"]):
        assert [m.identity for m in remote_result.matches] == [m.identity for m in local_result.matches]
        np.testing.assert_allclose(
            [m.score for m in remote_result.matches], [m.score for m in local_result.matches], atol=1e-5
        )
    assert [r.matches[0].identity for r in results["triton"]] == [f"person-{i}" for i in range(4)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_is_down_at_open_is_named(tiny_bundle, protocol):
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError, match=rf"{url} \({protocol}\).*model 'pdsn'.*server running"):
        Recognizer.open(tiny_bundle, backend="triton", precision="fp32", url=url, protocol=protocol)


def test_a_model_that_is_not_ready_is_named_with_the_ready_ones(server, tiny_bundle):
    with pytest.raises(BackendUnavailableError, match=r"no ready model 'face'.*ready: pdsn, pdsn_faces, pdsn_features"):
        _open(tiny_bundle, server, "grpc", model_name="face")


def test_a_bundle_the_server_does_not_serve_is_refused(server, tiny_float_bundle):
    with pytest.raises(BundleIntegrityError, match=r"Triton model 'pdsn' at .* does not match the bundle's contract"):
        _open(tiny_float_bundle, server, "grpc")


def test_requests_fail_while_the_server_is_down_and_work_again_after(server, tiny_bundle, local):
    """Last in the module: it stops and restarts the module's server."""
    faces = seeded_faces(3)
    expected = local.embed(faces)
    remotes = {protocol: _open(tiny_bundle, server, protocol) for protocol in PROTOCOLS}
    try:
        for remote in remotes.values():
            remote.features(faces)  # both models in use before the outage
        server.stop()
        for protocol, remote in remotes.items():
            with pytest.raises(
                TritonUnavailableError, match=rf"{_url(server, protocol)} \({protocol}\).*run inference"
            ):
                remote.embed(faces)
            with pytest.raises(TritonUnavailableError, match=r"model 'pdsn_features'"):
                remote.features(faces)
            assert remote.healthy  # the batcher failed those requests only
        server.start()
        for remote in remotes.values():
            np.testing.assert_allclose(remote.embed(faces), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
            assert remote.features(faces).shape == (3, 32 * 7 * 6)
    finally:
        for remote in remotes.values():
            remote.close()


def test_the_service_fronts_the_triton_server(server, tiny_bundle, local, tmp_path):
    import httpx
    from serve_harness import ServerProcess, b64

    faces = seeded_faces(3, seed=8)
    options = ("--backend", "triton", "--precision", "fp32", "--triton-url", server.grpc_url)
    with (
        ServerProcess(tiny_bundle, tmp_path / "serve.log", *options, "--gallery", str(tmp_path / "g.db")) as front,
        httpx.Client(base_url=front.url, timeout=30.0) as http,
    ):
        embedded = http.post("/v1/embed", json={"images": [b64(f) for f in faces], "occlusion": [[12], [], [20, 21]]})
        assert embedded.status_code == 200, embedded.text
        occlusion = np.zeros((3, 25), np.float32)
        occlusion[0, 12] = occlusion[2, 20:22] = 1
        expected = local.embed(faces, occlusion=occlusion)
        assert _cosine_min(np.asarray(embedded.json()["embeddings"]), expected) >= 0.99999
        enrolled = http.post("/v1/identities", json={"identity": "remote", "images": [b64(faces[1])]})
        assert enrolled.status_code == 201, enrolled.text
        found = http.post("/v1/identify", json={"image": b64(faces[1]), "k": 1}).json()["matches"]
        assert found[0]["identity"] == "remote" and found[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_the_python_kind_runs_the_whole_photo_pipeline(server, local):
    import tritonclient.grpc as grpcclient

    from pdsn.bench.real_photos import group_photo

    photo = group_photo().read_bytes()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput("photo", [1], "BYTES"), grpcclient.InferInput("min_face", [1], "FP32")]
    inputs[0].set_data_from_numpy(np.array([photo], dtype=object))
    inputs[1].set_data_from_numpy(np.array([60.0], np.float32))
    answer = client.infer("pdsn_faces", inputs)
    expected = local.detect(photo, min_face=60)
    boxes, embeddings = answer.as_numpy("boxes"), answer.as_numpy("embedding")
    assert boxes.shape == (len(expected), 4) and len(expected) == 6
    np.testing.assert_allclose(boxes, [f.box for f in expected], atol=1e-3)
    np.testing.assert_allclose(answer.as_numpy("landmarks"), [f.landmarks for f in expected], atol=1e-3)
    reference = local.embed(photo, detection=_detection(60))
    assert _cosine_min(embeddings, np.stack([f.embedding for f in reference])) >= 0.99999
    inputs[0].set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(Exception, match="pdsn faces model: ValueError"):
        client.infer("pdsn_faces", inputs)


def _detection(min_face: float):
    from pdsn.runtime.photos import DetectionSettings

    return DetectionSettings(min_face=min_face)
