"""FP16 variant: the trunk in FP16; normalisation, FDM op and head in FP32; graph I/O types unchanged."""

from __future__ import annotations

from pathlib import Path

import onnx

from pdsn.calib.graph_regions import kept_fp32_nodes


def make_fp16(fp32_path: str | Path, out_path: str | Path) -> None:
    """Convert with ONNX Runtime's float16 converter, blocking the nodes that must stay FP32.

    The converter routes every tensor between two blocked nodes through an FP16 round trip (its
    companion pass removes those) and puts a no-op FP32->FP32 Cast, declared FP16, on each FP32
    weight of a blocked node (repaired here).
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(fp32_path))
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(
        use_symbolic_shape_infer=False, keep_io_types=True, node_block_list=kept_fp32_nodes(model)
    )
    wrapped.remove_cascaded_cast_nodes()
    _repair_weight_casts(wrapped.model)
    wrapped.topological_sort()
    converted = wrapped.model
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(out_path))


def _repair_weight_casts(model: onnx.ModelProto) -> None:
    graph = model.graph
    initializer_types = {i.name: i.data_type for i in graph.initializer}
    noop = {
        node.output[0]: node
        for node in graph.node
        if node.op_type == "Cast"
        and node.input[0] in initializer_types
        and any(a.name == "to" and a.i == initializer_types[node.input[0]] for a in node.attribute)
    }
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in noop:
                node.input[i] = noop[name].input[0]
    for cast in noop.values():
        graph.node.remove(cast)
    # The converter also re-declares the FP32 weights it kept as FP16; the initializer is the truth.
    stale = [vi for vi in graph.value_info if vi.name in noop or vi.name in initializer_types]
    for vi in stale:
        graph.value_info.remove(vi)
