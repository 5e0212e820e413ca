"""Which nodes of an exported graph may change precision.

Only the convolutional trunk is made FP16 or INT8. The input normalisation, the fused FDM op, the
head (its folded BN1d + Linear) and any output normalisation stay FP32: the normalisation and
head are cheap and sensitive, and the FDM op must stay exact.
"""

from __future__ import annotations

import onnx

from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP


def trunk_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes between the first Conv and the FDM op (exclusive), in graph order."""
    nodes = list(model.graph.node)
    producers = {output: node for node in nodes for output in node.output}
    fdm = [n for n in nodes if n.op_type == FDM_OP and n.domain == FDM_DOMAIN]
    if len(fdm) != 1:
        raise ValueError(
            f"expected one {FDM_DOMAIN}::{FDM_OP} node in the model, found {len(fdm)}; is this a "
            f"model written by `pdsn export`?"
        )
    first_conv = next((n for n in nodes if n.op_type == "Conv"), None)
    if first_conv is None:
        raise ValueError("the model has no Conv node: not an LResNet-IR export")
    trunk: set[str] = set()
    stack = [fdm[0].input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in trunk:
            continue
        trunk.add(node.name)
        if node.name != first_conv.name:
            stack.extend(node.input)
    return [n.name for n in nodes if n.name in trunk]


def int8_nodes(model: onnx.ModelProto) -> list[str]:
    """Trunk nodes to quantize: all but the one whose output feeds the FDM op.

    Quantizing that last residual Add would put a Q/DQ pair on its output and hand the FP32 FDM
    op and head features snapped to the INT8 grid; left out, its inputs (the last convolution,
    itself INT8) still run quantized and the features stay in full precision.
    """
    fdm = next(n for n in model.graph.node if n.op_type == FDM_OP and n.domain == FDM_DOMAIN)
    trunk = set(trunk_nodes(model))
    return [n.name for n in model.graph.node if n.name in trunk and fdm.input[0] not in n.output]


def kept_fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node outside the trunk."""
    trunk = set(trunk_nodes(model))
    return [n.name for n in model.graph.node if n.name not in trunk]
