"""The backend registry: one place names the backends and what each can do; the ONNX parts open one way."""

from __future__ import annotations

import numpy as np
import pytest

from pdsn.model.detector_contract import IMAGE_INPUT, NET_OUTPUTS
from pdsn.runtime import open_bundle
from pdsn.runtime.backends import BACKEND_CHOICES, create_backend
from pdsn.runtime.backends.base import Backend
from pdsn.runtime.backends.onnx_parts import open_session
from pdsn.runtime.backends.registry import (
    BACKENDS,
    ENGINE_BACKENDS,
    KINDS,
    ONNX_PART_BACKENDS,
    REGISTRY,
    REMOTE_BACKENDS,
)
from pdsn.runtime.detection.nets import DETECTOR_BACKENDS
from pdsn.runtime.occlusion_estimator import ESTIMATOR_BACKENDS


def test_every_backend_is_named_once_with_its_capabilities():
    assert [k.name for k in KINDS] == list(REGISTRY) and len(REGISTRY) == len(KINDS)
    assert BACKENDS == ("onnxruntime", "openvino", "tensorrt", "tensorrt-rtx")
    assert ENGINE_BACKENDS == ("tensorrt", "tensorrt-rtx") and REMOTE_BACKENDS == ("triton",)
    assert ESTIMATOR_BACKENDS == DETECTOR_BACKENDS == ONNX_PART_BACKENDS == ("onnxruntime", "openvino")
    assert ("auto", *BACKENDS, *REMOTE_BACKENDS) == BACKEND_CHOICES
    for kind in KINDS:  # each class imports without its engine library (those load when one is opened)
        assert issubclass(kind.load(), Backend), kind.name


def test_an_unknown_backend_is_refused_naming_the_known_ones(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    with pytest.raises(ValueError, match="backend 'auto' is not one of .*resolve 'auto' with resolve_backend"):
        create_backend("auto", str(bundle.variant_path("fp32")), bundle.dictionary, bundle.contract)


def test_onnx_parts_open_the_same_way_on_every_backend_that_runs_them(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    path = bundle.file(bundle.manifest.detector.files["rnet"])
    faces = np.random.default_rng(0).uniform(-1, 1, (3, 3, 24, 24)).astype(np.float32)
    names = list(NET_OUTPUTS["rnet"])
    answers = {}
    for backend in ONNX_PART_BACKENDS:
        if backend == "openvino":
            pytest.importorskip("openvino")
        session = open_session(path, backend, "cpu", 1, "the face detector")
        assert session.inputs == [IMAGE_INPUT] and sorted(session.outputs) == sorted(names)
        assert session.spatial == [24, 24] and session.description["backend"] == backend
        answers[backend] = session.run({IMAGE_INPUT: faces}, names)
        assert [a.shape for a in answers[backend]] == [(3, 4), (3,)]
    for got in answers.values():
        for value, expected in zip(got, answers["onnxruntime"]):
            np.testing.assert_allclose(value, expected, atol=1e-5)
    with pytest.raises(ValueError, match="the face detector runs on one of \\('onnxruntime', 'openvino'\\)"):
        open_session(path, "tensorrt", "cuda", None, "the face detector")
