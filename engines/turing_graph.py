"""TensorRT-RTX engines for Turing (compute capability 7.5), which has no FP32 GEMM there.

Every variant keeps two GEMMs in FP32: the FDM op's discard count and the head's Gemm. For a
Turing target both run in FP16 instead. The count stays exact (0/1 operands, counts at most 25).
The head gets FP16 weights and input and casts its output back to FP32. That is an
approximation, so :func:`turing_model` is checked against the variant it came from (ONNX Runtime,
the FP16 gate) before the engine is built.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pdsn.export.fdm_function import fdm_function
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP

TURING = "7.5"
GEMM_OPS = ("Gemm", "MatMul")


def turing_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose FDM count and FP32 GEMMs run in FP16."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    functions = [f for f in rewritten.functions if f.domain == FDM_DOMAIN and f.name == FDM_OP]
    if len(functions) != 1:
        raise ValueError(f"expected one {FDM_DOMAIN}::{FDM_OP} function in the model, found {len(functions)}")
    opset = next(o.version for o in functions[0].opset_import if o.domain in ("", "ai.onnx"))
    functions[0].CopyFrom(fdm_function(opset, fp16_count=True))

    initializers = {i.name: i for i in rewritten.graph.initializer}
    nodes, replaced = [], set()
    for node in rewritten.graph.node:
        weights = [initializers.get(name) for name in node.input[1:]]
        if (
            node.op_type not in GEMM_OPS
            or not weights
            or any(w is None or w.data_type != onnx.TensorProto.FLOAT for w in weights)
        ):
            nodes.append(node)
            continue
        half = [f"{name}_fp16" for name in node.input]
        rewritten.graph.initializer.extend(
            numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16), h) for w, h in zip(weights, half[1:])
        )
        replaced.update(node.input[1:])
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes += [
            helper.make_node("Cast", [node.input[0]], [half[0]], to=onnx.TensorProto.FLOAT16),
            helper.make_node(node.op_type, half, [f"{node.output[0]}_fp16"], name=node.name, **attributes),
            helper.make_node("Cast", [f"{node.output[0]}_fp16"], [node.output[0]], to=onnx.TensorProto.FLOAT),
        ]
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    still_used = {name for node in nodes for name in node.input}
    kept = [i for i in rewritten.graph.initializer if i.name not in replaced or i.name in still_used]
    del rewritten.graph.initializer[:]
    rewritten.graph.initializer.extend(kept)
    return rewritten
