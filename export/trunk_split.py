"""The recognition model split at the FDM op: a trunk model (image -> feature map) and the folded head.

Identifying a face against a gallery under the PDSN protocol needs each gallery face's features
under the probe's occlusion pattern. The head after the mask is linear, so the gallery stores the
trunk's features once and applies the head per pattern (``pdsn.model.folded_head``). The trunk is
cut out of each precision variant, so its features carry that variant's precision; the head is
read from the FP32 model, whose Gemm every variant keeps in FP32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import (
    DICTIONARY_INPUT,
    EMBEDDING_OUTPUT,
    FDM_DOMAIN,
    FDM_OP,
    FEATURES_OUTPUT,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    ModelContract,
)
from pdsn.model.comparison import Embed, onnx_session, split_parity
from pdsn.model.folded_head import FoldedHead

TRUNK_FILES = {"fp32": "trunk.onnx", "fp16": "trunk.fp16.onnx", "int8": "trunk.int8.onnx"}
HEAD_FILE = "head.npz"


class SplitParityError(PdsnError, RuntimeError):
    """The trunk and folded head do not reproduce the full model; nothing was written."""


def write_trunk(
    variant: Path,
    precision: str,
    out: Path,
    head: FoldedHead,
    full: Embed,
    dictionary: np.ndarray,
    contract: ModelContract,
    faces: np.ndarray,
) -> dict:
    """Cut the trunk of ``variant`` into ``out`` and check it with ``head`` against ``full`` on ``faces``.

    Returns the manifest entry's parity; raises SplitParityError (naming the patterns) on a miss.
    """
    onnx.save(trunk_model(onnx.load(str(variant))), str(out))
    session = onnx_session(out)

    def features(batch: np.ndarray) -> np.ndarray:
        images = batch if contract.image_layout == "nhwc-uint8" else contract.normalized_nchw(batch)
        return session.run(None, {IMAGE_INPUT: images})[0]

    report = split_parity(full, features, head, dictionary, faces, contract)
    if not report["passed"]:
        raise SplitParityError(
            f"the {precision} trunk and folded head do not reproduce the full {precision} model "
            f"({'; '.join(report['failures'])}); the bundle is unchanged"
        )
    worst = min(p["cosine_min"] for p in report["patterns"].values())
    return {
        "against": f"{precision} full model",
        "faces": len(faces),
        "cosine_min": worst,
        "gate": report["gate"],
        "passed": True,
    }


def trunk_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that stops at the FDM op's features input, exposed as ``features``."""
    fdm = _fdm_node(model)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    needed: set[int] = set()
    stack = [fdm.input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    nodes = [node for node in graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input}
    features_type = _feature_type(model, fdm.input[0])
    trunk = helper.make_graph(
        [*nodes, helper.make_node("Identity", [fdm.input[0]], [FEATURES_OUTPUT], name="trunk_features")],
        f"{graph.name}-trunk",
        [i for i in graph.input if i.name not in (OCCLUSION_INPUT, DICTIONARY_INPUT) and i.name in used],
        [helper.make_tensor_value_info(FEATURES_OUTPUT, features_type, ["batch", *_feature_dims(model)])],
        [t for t in graph.initializer if t.name in used],
    )
    out = helper.make_model(
        trunk,
        opset_imports=[o for o in model.opset_import if o.domain != FDM_DOMAIN],
        producer_name="pdsn-deploy",
        ir_version=model.ir_version,
    )
    onnx.checker.check_model(out, full_check=True)
    return out


def folded_head(model: onnx.ModelProto) -> FoldedHead:
    """The head's folded Linear: the Gemm the FDM op's output flows into (weight (E, F), bias (E,))."""
    fdm = _fdm_node(model)
    consumers = {name: node for node in model.graph.node for name in node.input}
    node, tensor = consumers.get(fdm.output[0]), fdm.output[0]
    while node is not None and node.op_type in ("Reshape", "Flatten"):
        tensor = node.output[0]
        node = consumers.get(tensor)
    if node is None or node.op_type != "Gemm":
        raise ValueError(
            f"expected the FDM op's output to reach the head's Gemm through Reshape/Flatten, found "
            f"{node.op_type if node is not None else 'nothing'}; is this an FP32 model written by `pdsn export`?"
        )
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("transA", 0) or not attributes.get("transB", 0) or attributes.get("alpha", 1.0) != 1.0:
        raise ValueError(f"the head's Gemm {node.name!r} is not y = x W^T + b (attributes {attributes})")
    initializers = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32) * float(
            attributes.get("beta", 1.0)
        )
    else:  # the exporter leaves out a bias that is all zeros
        bias = np.zeros(weight.shape[0], dtype=np.float32)
    return FoldedHead(np.ascontiguousarray(weight), np.ascontiguousarray(bias))


def _fdm_node(model: onnx.ModelProto) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if n.op_type == FDM_OP and n.domain == FDM_DOMAIN]
    if len(nodes) != 1:
        raise ValueError(
            f"expected one {FDM_DOMAIN}::{FDM_OP} node, found {len(nodes)}; is this a model written by `pdsn export`?"
        )
    return nodes[0]


def _feature_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of the features tensor: the model's declared value info, else FP32."""
    for info in [*model.graph.value_info, *model.graph.output]:
        if info.name == name:
            return info.type.tensor_type.elem_type
    embedding = next(o for o in model.graph.output if o.name == EMBEDDING_OUTPUT)
    return embedding.type.tensor_type.elem_type


def _feature_dims(model: onnx.ModelProto) -> list[int]:
    """(C, H, W) of the feature map, from the dictionary's shape [25, C, H, W]."""
    for info in model.graph.input:
        if info.name == DICTIONARY_INPUT:
            return [d.dim_value for d in info.type.tensor_type.shape.dim[1:]]
    for tensor in model.graph.initializer:
        if tensor.name == DICTIONARY_INPUT:
            return list(tensor.dims[1:])
    raise ValueError(f"the model has no {DICTIONARY_INPUT!r} input or initializer; is it a `pdsn export` model?")
