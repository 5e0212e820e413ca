"""The ``ai.pdsn::FdmGatherMul`` op as an ONNX model-local function with a standard-op body.

For a binary dictionary D (1 = keep), the product of the occluded cells' items equals
``Relu(1 - occlusion @ (1 - D))``: the MatMul counts, per feature element, how many occluded
cells discard it, and the element survives only when that count is zero. The counts are small
integers, so the identity is exact in FP32 and FP16. ``CastLike`` keeps the body type-generic.
With ``fp16_count`` the MatMul itself runs in FP16 whatever the feature type: still exact, for
targets without FP32 GEMMs (TensorRT-RTX on Turing, see :mod:`pdsn.engines.turing_graph`).
"""

from __future__ import annotations

import onnx
from onnx import helper

from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP

FUNCTION_INPUTS = ("features", "occlusion", "dictionary")
FUNCTION_OUTPUT = "masked_features"


def fdm_function(opset: int, fp16_count: bool = False) -> onnx.FunctionProto:
    """Build the function definition for a model whose default-domain opset is ``opset``."""
    if fp16_count:
        half = onnx.TensorProto.FLOAT16
        count = [
            helper.make_node("Cast", ["occlusion"], ["occlusion_half"], to=half),
            helper.make_node("Cast", ["discard"], ["discard_half"], to=half),
            helper.make_node("MatMul", ["occlusion_half", "discard_half"], ["discard_count_half"]),
            helper.make_node("CastLike", ["discard_count_half", "discard"], ["discard_count"]),
        ]
    else:
        count = [
            helper.make_node("CastLike", ["occlusion", "discard"], ["occlusion_typed"]),
            helper.make_node("MatMul", ["occlusion_typed", "discard"], ["discard_count"]),
        ]
    nodes = [
        helper.make_node("Constant", [], ["one_f32"], value_float=1.0),
        helper.make_node("Constant", [], ["flat_rows"], value_ints=[0, -1]),
        helper.make_node("CastLike", ["one_f32", "dictionary"], ["one"]),
        helper.make_node("Reshape", ["dictionary", "flat_rows"], ["dictionary_flat"]),
        helper.make_node("Sub", ["one", "dictionary_flat"], ["discard"]),
        *count,
        helper.make_node("Sub", ["one", "discard_count"], ["keep_margin"]),
        helper.make_node("Relu", ["keep_margin"], ["keep_flat"]),
        helper.make_node("Shape", ["features"], ["feature_shape"]),
        helper.make_node("Reshape", ["keep_flat", "feature_shape"], ["keep"]),
        helper.make_node("CastLike", ["keep", "features"], ["keep_typed"]),
        helper.make_node("Mul", ["features", "keep_typed"], [FUNCTION_OUTPUT]),
    ]
    return helper.make_function(
        domain=FDM_DOMAIN,
        fname=FDM_OP,
        inputs=list(FUNCTION_INPUTS),
        outputs=[FUNCTION_OUTPUT],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=(
            "out[n] = features[n] * prod_{j: occlusion[n,j]=1} dictionary[j], for a binary dictionary (1 = keep)."
        ),
    )


def fdm_node(features: str, occlusion: str, dictionary: str, output: str) -> onnx.NodeProto:
    return helper.make_node(
        FDM_OP, [features, occlusion, dictionary], [output], domain=FDM_DOMAIN, name="fdm_gather_mul"
    )
