"""Rewrite an ONNX variant so that TensorRT builds its FDM step with the fused plugin.

``FdmGatherMul(features, occlusion, dictionary)`` becomes
``FdmGatherMulPacked(features, occlusion_words, packed_dictionary)`` (see
:mod:`pdsn.kernels.fdm_plugin`):

- the occlusion words are computed in the graph, ``ReduceSum(Cast<int32>(occlusion) * 2^j)``, so
  callers keep feeding the contract's [N, 25] occlusion input;
- a dictionary graph input is replaced by the packed one, ``fdm_dictionary_packed`` [25, 672]
  int32, which the runtime binds instead (32x less device memory); an embedded dictionary is
  packed in place.

The plugin node carries the ``plugin_namespace`` / ``plugin_version`` attributes through which
TensorRT's ONNX parser finds a registered plugin for an op it does not know; the model-local
function is dropped so the parser cannot inline the standard-op body instead.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pdsn.kernels.fdm_pack import pack_dictionary, packed_words
from pdsn.kernels.fdm_plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP

PACKED_DICTIONARY_INPUT = "fdm_dictionary_packed"
OCCLUSION_WORDS = "fdm_occlusion_words"


def plugin_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose FDM node is the packed plugin op; ``model`` is left unchanged."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    nodes = [n for n in graph.node if n.op_type == FDM_OP and n.domain == FDM_DOMAIN]
    if len(nodes) != 1:
        raise ValueError(
            f"expected one {FDM_DOMAIN}::{FDM_OP} node to replace by the plugin, found {len(nodes)}; "
            f"re-export the bundle with `pdsn export`"
        )
    node = nodes[0]
    features, occlusion, dictionary = node.input
    cells = _pack_dictionary(graph, dictionary)
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.initializer.extend(
        [
            numpy_helper.from_array((1 << np.arange(cells)).astype(np.int32), "fdm_cell_bits"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "fdm_cell_axis"),
        ]
    )
    replacement = [
        helper.make_node("Cast", [occlusion], ["fdm_occlusion_int"], to=onnx.TensorProto.INT32),
        helper.make_node("Mul", ["fdm_occlusion_int", "fdm_cell_bits"], ["fdm_occlusion_bits"]),
        helper.make_node("ReduceSum", ["fdm_occlusion_bits", "fdm_cell_axis"], [OCCLUSION_WORDS], keepdims=0),
        helper.make_node(
            PLUGIN_NAME,
            [features, OCCLUSION_WORDS, PACKED_DICTIONARY_INPUT],
            list(node.output),
            domain=FDM_DOMAIN,
            name="fdm_gather_mul_plugin",
            plugin_namespace=PLUGIN_NAMESPACE,
            plugin_version=PLUGIN_VERSION,
        ),
    ]
    for offset, new in enumerate(replacement):
        graph.node.insert(position + offset, new)
    words = helper.make_tensor_value_info(OCCLUSION_WORDS, onnx.TensorProto.INT32, [None])
    words.type.tensor_type.shape.dim[0].CopyFrom(_input(graph, occlusion).type.tensor_type.shape.dim[0])
    graph.value_info.append(words)
    kept = [f for f in rewritten.functions if not (f.name == FDM_OP and f.domain == FDM_DOMAIN)]
    del rewritten.functions[:]
    rewritten.functions.extend(kept)
    return rewritten


def _pack_dictionary(graph: onnx.GraphProto, name: str) -> int:
    """Replace the dictionary input or initializer ``name`` by its packed form; returns its cells."""
    initializer = next((i for i in graph.initializer if i.name == name), None)
    if initializer is not None:
        packed = pack_dictionary(numpy_helper.to_array(initializer)).view(np.int32)
        graph.initializer.remove(initializer)
        graph.initializer.append(numpy_helper.from_array(packed, PACKED_DICTIONARY_INPUT))
        return packed.shape[0]
    value = _input(graph, name)
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
    packed_input = helper.make_tensor_value_info(
        PACKED_DICTIONARY_INPUT, onnx.TensorProto.INT32, [dims[0], packed_words(int(np.prod(dims[1:])))]
    )
    graph.input.remove(value)
    graph.input.append(packed_input)
    return dims[0]


def _input(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    return next(i for i in graph.input if i.name == name)
