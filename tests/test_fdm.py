"""The fused FDM op: numpy reference against first principles, and the ONNX function against both."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from factories import random_binary_dictionary
from onnx import helper

from pdsn.export.fdm_function import fdm_function, fdm_node
from pdsn.kernels.fdm_reference import fdm_gather_mul
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP

SHAPE = (16, 7, 6)


def _naive(features, occlusion, dictionary):
    out = features.copy()
    for n in range(len(features)):
        for j in np.flatnonzero(occlusion[n]):
            out[n] = out[n] * dictionary[j]
    return out


def _patterns(batch, rng):
    occlusion = (rng.random((batch, 25)) < 0.2).astype(np.float32)
    occlusion[0] = 0  # none
    occlusion[1] = 1  # all 25
    occlusion[2] = 0
    occlusion[2, 12] = 1  # one cell
    return occlusion


def test_reference_matches_the_definition():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, *SHAPE)).astype(np.float32)
    dictionary = random_binary_dictionary(SHAPE, seed=1)
    occlusion = _patterns(8, rng)
    out = fdm_gather_mul(features, occlusion, dictionary)
    np.testing.assert_array_equal(out, _naive(features, occlusion, dictionary))
    np.testing.assert_array_equal(out[0], features[0])
    np.testing.assert_array_equal(out[1], features[1] * np.prod(dictionary, axis=0))


def test_reference_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="occlusion has shape"):
        fdm_gather_mul(np.zeros((2, *SHAPE)), np.zeros((2, 24)), np.zeros((25, *SHAPE)))
    with pytest.raises(ValueError, match="same C, H, W"):
        fdm_gather_mul(np.zeros((2, *SHAPE)), np.zeros((2, 25)), np.zeros((25, 8, 7, 6)))


def _function_model(dtype: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [fdm_node("features", "occlusion", "dictionary", "out")],
        "fdm",
        [
            helper.make_tensor_value_info("features", dtype, [None, *SHAPE]),
            helper.make_tensor_value_info("occlusion", onnx.TensorProto.FLOAT, [None, 25]),
            helper.make_tensor_value_info("dictionary", dtype, [25, *SHAPE]),
        ],
        [helper.make_tensor_value_info("out", dtype, [None, *SHAPE])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(FDM_DOMAIN, 1)],
        functions=[fdm_function(18)],
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("batch", [1, 3, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_onnx_function_equals_reference(batch, dtype):
    rng = np.random.default_rng(batch)
    onnx_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    session = ort.InferenceSession(_function_model(onnx_type).SerializeToString(), providers=["CPUExecutionProvider"])
    features = rng.normal(size=(batch, *SHAPE)).astype(dtype)
    dictionary = random_binary_dictionary(SHAPE, seed=batch).astype(dtype)
    occlusion = _patterns(batch, rng) if batch >= 3 else np.ones((batch, 25), np.float32)
    (out,) = session.run(None, {"features": features, "occlusion": occlusion, "dictionary": dictionary})
    np.testing.assert_array_equal(out, fdm_gather_mul(features, occlusion, dictionary))


def test_function_is_one_node_with_a_standard_op_body():
    model = _function_model(onnx.TensorProto.FLOAT)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [(FDM_DOMAIN, FDM_OP)]
    body_domains = {n.domain for n in model.functions[0].node}
    assert body_domains <= {"", "ai.onnx"}
