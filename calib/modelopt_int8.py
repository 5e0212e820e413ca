"""INT8 variant made by NVIDIA ModelOpt (`--quantizer modelopt`), for TensorRT deployments.

ModelOpt places Q/DQ nodes by TensorRT's rules. It is given the trunk alone, cut out of the FP32
model (from the first convolution's input to the FDM op's features input): the normalisation,
the ``ai.pdsn`` FDM function and the head never reach it, so it needs no TensorRT to calibrate a
custom op, and they stay FP32 as in every variant. The quantized trunk is spliced back in its
place. Calibration runs on ONNX Runtime's CPU provider; the activations are the normalised faces
the FP32 model's own prefix computes. Weights take 8 bits (ModelOpt targets GPUs, which
accumulate in 32 bits).

ModelOpt pins onnxruntime-gpu and onnx versions of its own, so it lives in a separate
environment: ``pip install 'nvidia-modelopt[onnx]'`` there, then ``pip install --no-deps -e .``.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections import deque
from pathlib import Path

import numpy as np
import onnx

from pdsn.calib.data import FaceSet
from pdsn.calib.graph_regions import int8_nodes, trunk_nodes
from pdsn.errors import PdsnError
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP, IMAGE_INPUT, ModelContract
from pdsn.model.comparison import onnx_feeds, onnx_session

METHODS = {"entropy": "entropy", "minmax": "max"}
INSTALL_HINT = (
    "--quantizer modelopt needs NVIDIA ModelOpt: in a separate environment (it pins its own "
    "onnxruntime-gpu and onnx), `pip install 'nvidia-modelopt[onnx]'`, then `pip install --no-deps -e .` "
    "of this package; or use the default --quantizer onnxruntime"
)


class ModelOptUnavailableError(PdsnError, RuntimeError):
    """NVIDIA ModelOpt is not installed in this environment."""


def make_int8_modelopt(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: FaceSet,
    dictionary: np.ndarray,
    contract: ModelContract,
    method: str,
) -> dict:
    """Quantize the trunk of ``fp32_path`` with ModelOpt and write the whole model to ``out_path``."""
    if method not in METHODS:
        raise ValueError(
            f"--method {method!r} is not available with --quantizer modelopt; use one of {sorted(METHODS)}"
        )
    try:
        import modelopt
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise ModelOptUnavailableError(INSTALL_HINT) from None

    model = onnx.load(str(fp32_path))
    trunk = set(trunk_nodes(model))
    first = next(n for n in model.graph.node if n.name in trunk)
    fdm = next(n for n in model.graph.node if n.op_type == FDM_OP and n.domain == FDM_DOMAIN)
    trunk_input, trunk_output = first.input[0], fdm.input[0]
    quantized_names = set(int8_nodes(model))
    with tempfile.TemporaryDirectory(prefix="pdsn-modelopt-") as scratch:
        prefix_path, trunk_path, done_path = (
            str(Path(scratch) / name) for name in ("prefix.onnx", "trunk.onnx", "q.onnx")
        )
        extractor = onnx.utils.Extractor(model)
        onnx.save(extractor.extract_model([trunk_input], [trunk_output]), trunk_path)
        images = onnx_feeds(calibration.images, calibration.occlusion, dictionary, contract)[IMAGE_INPUT]
        if trunk_input == IMAGE_INPUT:  # float input: the graph has no normalisation prefix
            activations = images
        else:
            onnx.save(extractor.extract_model([IMAGE_INPUT], [trunk_input]), prefix_path)
            activations = onnx_session(prefix_path).run([trunk_input], {IMAGE_INPUT: images})[0]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints per-histogram chatter
            quantize(
                trunk_path,
                quantize_mode="int8",
                calibration_data={trunk_input: activations},
                calibration_method=METHODS[method],
                calibration_eps=["cpu"],
                nodes_to_exclude=[f"^{re.escape(n)}$" for n in trunk if n not in quantized_names],
                high_precision_dtype="fp32",
                output_path=done_path,
                log_level="ERROR",
            )
        quantized_trunk = onnx.load(done_path)
    merged = _splice(model, trunk, quantized_trunk)
    onnx.save(merged, str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    return {
        "method": method,
        "quantizer": "modelopt",
        "quantizer_version": modelopt.__version__,
        "weight_bits": 8,
        "cache_reused": False,
        "quantized_nodes": _int8_inputs(quantized_trunk),
        "offered_nodes": len(quantized_names),
    }


def _int8_inputs(model: onnx.ModelProto) -> int:
    """How many compute nodes take an input through a DequantizeLinear: those ModelOpt quantized
    (its placement rules may leave some of the nodes it was offered in FP32)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized & set(n.input)
    )


def _splice(model: onnx.ModelProto, trunk: set[str], quantized: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its ``trunk`` nodes replaced by the ``quantized`` trunk graph."""
    kept = [n for n in model.graph.node if n.name not in trunk]
    nodes = _topological(kept + list(quantized.graph.node))
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    del merged.graph.node[:]
    merged.graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    initializers = {i.name: i for i in model.graph.initializer}
    initializers.update({i.name: i for i in quantized.graph.initializer})
    del merged.graph.initializer[:]
    merged.graph.initializer.extend(i for name, i in initializers.items() if name in used)
    del merged.graph.value_info[:]
    versions = {o.domain: o.version for o in model.opset_import}
    for opset in quantized.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in versions.items())
    # ModelOpt may raise the standard opset (Q/DQ of a newer version); the FDM function's body
    # (Constant, Sub, MatMul, Relu, Mul and shape ops) means the same there, and must import
    # the model's version.
    for function in merged.functions:
        for opset in function.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = versions.get("", opset.version)
    return merged


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every node comes after the producers of its inputs."""
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    waiting = [sum(1 for name in set(n.input) if name in producer) for n in nodes]
    consumers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in set(node.input):
            if name in producer:
                consumers.setdefault(producer[name], []).append(index)
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        index = ready.popleft()
        order.append(nodes[index])
        for consumer in consumers.get(index, []):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    if len(order) != len(nodes):
        raise RuntimeError("the spliced INT8 graph has a cycle or a dangling input; this is a bug in pdsn")
    return order
