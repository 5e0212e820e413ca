"""The OpenVINO backend: same embeddings as ONNX Runtime, any batch, thread-safe, explicit refusals."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("openvino")

from pdsn.model.comparison import PARITY_PATTERNS
from pdsn.model.grid import cells_to_vector
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import BackendUnavailableError, Recognizer, open_bundle
from pdsn.runtime.backends.openvino_backend import OpenVinoBackend


@pytest.fixture(scope="module")
def openvino_recognizer(tiny_bundle):
    with Recognizer.open(tiny_bundle, backend="openvino") as rec:
        yield rec


@pytest.fixture(scope="module")
def onnxruntime_recognizer(tiny_bundle):
    with Recognizer.open(tiny_bundle, backend="onnxruntime") as rec:
        yield rec


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _mixed_occlusion(count: int) -> np.ndarray:
    patterns = list(PARITY_PATTERNS.values())
    return np.stack([cells_to_vector(patterns[i % len(patterns)]) for i in range(count)])


@pytest.mark.parametrize("pattern", sorted(PARITY_PATTERNS))
def test_matches_onnxruntime_on_every_parity_pattern(openvino_recognizer, onnxruntime_recognizer, pattern):
    faces = seeded_faces(4, seed=11)
    cells = list(PARITY_PATTERNS[pattern])
    out = openvino_recognizer.embed(faces, cells)
    reference = onnxruntime_recognizer.embed(faces, cells)
    assert out.shape == (4, 512) and out.dtype == np.float32
    assert _cosine(out, reference).min() >= 0.99999


def test_float_input_embedded_dictionary_l2_bundle(tiny_float_bundle):
    faces = seeded_faces(3, seed=12)
    x = ((faces.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - 0.5) / 0.5
    occlusion = _mixed_occlusion(3)
    with Recognizer.open(tiny_float_bundle, backend="onnxruntime") as ort_rec:
        reference = ort_rec.embed(x, occlusion)
    with Recognizer.open(tiny_float_bundle, backend="openvino") as ov_rec:
        out = ov_rec.embed(x, occlusion)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert _cosine(out, reference).min() >= 0.99999


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_dynamic_batch_sizes(openvino_recognizer, onnxruntime_recognizer, batch):
    faces = seeded_faces(batch, seed=batch)
    occlusion = _mixed_occlusion(batch)
    out = openvino_recognizer.embed(faces, occlusion)
    assert out.shape == (batch, 512)
    assert _cosine(out, onnxruntime_recognizer.embed(faces, occlusion)).min() >= 0.99999


def test_concurrent_calls_each_get_their_own_result(tiny_bundle):
    jobs = [(seeded_faces(1 + i % 4, seed=100 + i), _mixed_occlusion(1 + i % 4)) for i in range(8)]
    with Recognizer.open(tiny_bundle, backend="openvino", hint="throughput") as rec:
        sequential = [rec.embed(faces, occlusion) for faces, occlusion in jobs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(3):
                concurrent = list(pool.map(lambda job: rec.embed(*job), jobs))
                for got, expected in zip(concurrent, sequential):
                    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_describe_reports_what_runs(tiny_bundle):
    with Recognizer.open(tiny_bundle, backend="openvino", hint="throughput", threads=1) as rec:
        info = rec.backend_info
    assert info["backend"] == "openvino" and info["device"] == "cpu"
    assert info["hint"] == "throughput" and info["threads"] == 1
    assert info["inference_precision"] == "f32" and info["infer_requests"] >= 1
    assert info["model"].endswith("model.onnx") and info["version"] and info["precision"] == "fp32"


def test_cuda_is_refused_not_run_on_cpu(tiny_bundle):
    with pytest.raises(BackendUnavailableError, match="CPU only.*onnxruntime.*tensorrt"):
        Recognizer.open(tiny_bundle, backend="openvino", device="cuda")


@pytest.mark.parametrize(("kwargs", "message"), [({"hint": "fast"}, "hint 'fast'"), ({"threads": 0}, "threads")])
def test_bad_options_are_named(tiny_bundle, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recognizer.open(tiny_bundle, backend="openvino", **kwargs)


@pytest.mark.parametrize("module", ["openvino", "onnx"])
def test_missing_library_gives_the_install_hint(tiny_bundle, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "pdsn-deploy\[openvino\]"'):
        Recognizer.open(tiny_bundle, backend="openvino")


def test_closed_backend_refuses_work(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    backend = OpenVinoBackend(str(bundle.variant_path("fp32")), bundle.dictionary, bundle.contract)
    images, occlusion = seeded_faces(1), _mixed_occlusion(1).astype(np.float32)
    assert backend.infer(images, occlusion).shape == (1, 512)
    backend.close()
    with pytest.raises(RuntimeError, match="openvino backend was closed"):
        backend.infer(images, occlusion)
    rec = Recognizer.open(tiny_bundle, backend="openvino")
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.embed(seeded_faces(1))


def test_direct_call_runs_the_same_model(openvino_recognizer):
    faces, occlusion = seeded_faces(3, seed=13), _mixed_occlusion(3)
    result = openvino_recognizer.direct_call(faces, occlusion)()
    np.testing.assert_allclose(result[0], openvino_recognizer.embed(faces, occlusion), rtol=1e-6, atol=1e-6)


def test_throughput_hint_keeps_two_batches_in_flight(tiny_bundle, onnxruntime_recognizer):
    faces = seeded_faces(24, seed=14)
    occlusion = _mixed_occlusion(24)
    with Recognizer.open(tiny_bundle, backend="openvino", hint="throughput", max_batch=4, queue_size=32) as rec:
        assert rec.backend_info["hint"] == "throughput" and rec.backend_info["infer_requests"] >= 2
        assert rec._backend.pipelined
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(rec.submit(faces[i], occlusion[i]).result) for i in range(24)]
            out = np.stack([f.result() for f in futures])
    reference = onnxruntime_recognizer.embed(faces, occlusion)
    assert _cosine(out, reference).min() >= 0.99999


def test_auto_backend_is_openvino_on_x86_cpus_where_installed(tiny_bundle, monkeypatch):
    import importlib.util
    import platform

    from pdsn.runtime.backends import resolve_backend

    manifest = open_bundle(tiny_bundle).manifest
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert resolve_backend("auto", "cpu", manifest) == "openvino"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert resolve_backend("auto", "cpu", manifest) == "onnxruntime"
    assert resolve_backend("auto", "cuda", manifest) == "onnxruntime"  # no engine in the bundle
    with pytest.raises(ValueError, match="not one of"):
        resolve_backend("fastest", "cpu", manifest)
