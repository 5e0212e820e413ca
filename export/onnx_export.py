"""PyTorch -> ONNX per the contract (docs/architecture.md, "The ONNX contract"), with the FDM step as one fused node.

The network is exported with the feature mask as a temporary graph input, ``Mul(features,
fdm_mask)``; graph surgery then replaces that Mul by ``ai.pdsn::FdmGatherMul(features, occlusion,
fdm_dictionary)`` and adds the op's model-local function. The head's two BatchNorm1d layers are
folded into its Linear before export, so the head is a single Gemm.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from pdsn.export.fdm_function import fdm_function, fdm_node
from pdsn.model.bundle_format import (
    DICTIONARY_INPUT,
    EMBEDDING_OUTPUT,
    FDM_DOMAIN,
    FDM_OP_VERSION,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    ModelContract,
)
from pdsn.model.grid import NUM_CELLS
from pdsn.model.recognition import RecognitionNetwork

_MASK_PLACEHOLDER = "fdm_mask"
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportOptions:
    image_layout: str = "nhwc-uint8"
    embed_dictionary: bool = False
    l2_normalize: bool = False
    opset: int = 18

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET} (got {self.opset})")
        ModelContract(image_layout=self.image_layout)  # validates the layout name

    def contract(self, model: RecognitionNetwork) -> ModelContract:
        return ModelContract(
            image_layout=self.image_layout,
            l2_normalized=self.l2_normalize,
            dictionary_binding="embedded" if self.embed_dictionary else "input",
            **model.contract_fields(),
        )


class DeployGraph(nn.Module):
    """What gets traced: contract input -> network features -> Mul(features, fdm_mask) -> folded head."""

    def __init__(self, model: RecognitionNetwork, contract: ModelContract) -> None:
        super().__init__()
        self.network = model
        self.head = model.deploy_head()
        self.uint8_input = contract.image_layout == "nhwc-uint8"
        self.l2_normalize = contract.l2_normalized
        norm = contract.normalization
        self.scale = float(norm["scale"])
        self.mean = _graph_constant(norm["mean"])
        self.std = _graph_constant(norm["std"])

    def forward(self, image: torch.Tensor, fdm_mask: torch.Tensor) -> torch.Tensor:
        x = image
        if self.uint8_input:
            # Cast before Transpose: TensorRT's Transpose does not take UInt8 tensors.
            x = image.to(torch.float32).permute(0, 3, 1, 2) / self.scale - self.mean
            if not (isinstance(self.std, float) and self.std == 1.0):
                x = x / self.std
        features = self.network.features(x) * fdm_mask
        embedding = self.head(features.flatten(1))
        if self.l2_normalize:
            embedding = nn.functional.normalize(embedding, dim=1)
        return embedding


def _graph_constant(value: float | list) -> float | torch.Tensor:
    """One number as a float, per-channel numbers as a [1, C, 1, 1] tensor."""
    if isinstance(value, list):
        return torch.tensor(value, dtype=torch.float32).view(1, -1, 1, 1)
    return float(value)


def export_onnx(
    model: RecognitionNetwork, dictionary: np.ndarray, path: str | Path, options: ExportOptions
) -> ModelContract:
    """Export ``model`` to ``path`` and return the contract the file honours."""
    contract = options.contract(model)
    expected = (NUM_CELLS, *contract.feature_shape)
    if tuple(dictionary.shape) != expected:
        raise ValueError(
            f"dictionary has shape {tuple(dictionary.shape)}, expected {expected} for "
            f"{model.architecture.name} (25 cells x its feature map)"
        )
    proto = _trace(DeployGraph(model.eval(), contract).eval(), contract, options.opset)
    produced = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if produced != options.opset:
        raise ValueError(
            f"--opset {options.opset} was asked for, but torch.onnx produced opset {produced}; "
            f"export with --opset {produced}, or with a torch version that writes opset {options.opset}"
        )
    _fuse_fdm(proto, dictionary.astype(np.float32), options)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return contract


def _trace(graph: DeployGraph, contract: ModelContract, opset: int) -> onnx.ModelProto:
    image = (
        torch.randint(0, 256, (2, *contract.image_shape), dtype=torch.uint8)
        if contract.image_layout == "nhwc-uint8"
        else torch.randn(2, *contract.image_shape)
    )
    mask = torch.ones(2, *contract.feature_shape)
    return traced_onnx(graph, (image, mask), [IMAGE_INPUT, _MASK_PLACEHOLDER], [EMBEDDING_OUTPUT], opset)


def traced_onnx(
    graph: nn.Module,
    inputs: tuple,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_shapes: tuple | None = None,
) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) of ``graph``, its chatter quieted; ``dynamic_shapes`` per input (default: a
    dynamic batch on every input)."""
    batch = torch.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The exporter's own deprecation chatter; real problems surface as exceptions.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                graph,
                inputs,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes or tuple({0: batch} for _ in inputs),
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    assert program is not None  # dynamo=True always returns an ONNXProgram
    return program.model_proto


def _fuse_fdm(proto: onnx.ModelProto, dictionary: np.ndarray, options: ExportOptions) -> None:
    graph = proto.graph
    muls = [n for n in graph.node if n.op_type == "Mul" and _MASK_PLACEHOLDER in n.input]
    if len(muls) != 1:
        raise RuntimeError(
            f"export: expected exactly one Mul consuming {_MASK_PLACEHOLDER!r}, found {len(muls)}; "
            f"the traced graph changed shape, so the FDM surgery cannot place the fused op"
        )
    mul = muls[0]
    features = next(name for name in mul.input if name != _MASK_PLACEHOLDER)
    position = list(graph.node).index(mul)
    graph.node.remove(mul)
    graph.node.insert(position, fdm_node(features, OCCLUSION_INPUT, DICTIONARY_INPUT, mul.output[0]))

    placeholder = next(i for i in graph.input if i.name == _MASK_PLACEHOLDER)
    batch_dim = next(i for i in graph.input if i.name == IMAGE_INPUT).type.tensor_type.shape.dim[0]
    graph.input.remove(placeholder)
    occlusion = helper.make_tensor_value_info(OCCLUSION_INPUT, onnx.TensorProto.FLOAT, [None, NUM_CELLS])
    occlusion.type.tensor_type.shape.dim[0].CopyFrom(batch_dim)
    graph.input.append(occlusion)
    if options.embed_dictionary:
        graph.initializer.append(onnx.numpy_helper.from_array(dictionary, DICTIONARY_INPUT))
    else:
        graph.input.append(
            helper.make_tensor_value_info(DICTIONARY_INPUT, onnx.TensorProto.FLOAT, list(dictionary.shape))
        )

    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    proto.functions.append(fdm_function(opset))
    proto.opset_import.append(helper.make_opsetid(FDM_DOMAIN, FDM_OP_VERSION))
    proto.producer_name = "pdsn-deploy"
