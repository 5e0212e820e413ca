"""Triton ``config.pbtxt`` text for a bundle's models, from its contract (no tritonclient needed to write it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pdsn.model.bundle_format import EMBEDDING_OUTPUT, FEATURES_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT, ModelContract
from pdsn.model.detector_contract import (
    BOX_OUTPUT,
    LANDMARK_OUTPUT,
    ONET_SIZE,
    PROBABILITY_OUTPUT,
    RNET_SIZE,
)
from pdsn.model.detector_contract import IMAGE_INPUT as DETECTOR_IMAGE_INPUT

# The photo pipeline's tensors (python kind).
PHOTO_INPUT = "photo"
MIN_FACE_INPUT = "min_face"
BOXES_OUTPUT = "boxes"
SCORES_OUTPUT = "scores"
LANDMARKS_OUTPUT = "landmarks"

# Triton's data types of the contract's numpy dtypes.
TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "bytes": "TYPE_STRING",
}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as Triton declares it: ``dims`` without the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelConfig:
    """What one ``config.pbtxt`` says; ``text()`` writes it. ``max_batch_size`` 0: one request at a time, its
    tensors' dims whole (no batch dimension), no dynamic batching."""

    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_kind: str
    instances: int
    platform: str | None = None
    backend: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    def __post_init__(self) -> None:
        if (self.platform is None) == (self.backend is None):
            raise ValueError("a Triton model config names exactly one of platform or backend")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"instance kind {self.instance_kind!r} is not one of {INSTANCE_KINDS}")
        if self.max_batch_size < 0 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} must be >= 0 and instances {self.instances} >= 1, "
                f"max_queue_delay_us {self.max_queue_delay_us} >= 0"
            )

    def text(self) -> str:
        lines = [f"# {line}".rstrip() for line in self.comment.splitlines()]
        lines.append(f"name: {_quoted(self.name)}")
        if self.platform is not None:
            lines.append(f"platform: {_quoted(self.platform)}")
        else:
            lines.append(f"backend: {_quoted(self.backend)}")
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines += _tensors("input", self.inputs) + _tensors("output", self.outputs)
        if self.max_batch_size > 0:
            lines += [
                "dynamic_batching {",
                *(f"  preferred_batch_size: {size}" for size in self.preferred_batch_sizes),
                f"  max_queue_delay_microseconds: {self.max_queue_delay_us}",
                "}",
            ]
        lines.append(f"instance_group [ {{ kind: {self.instance_kind} count: {self.instances} }} ]")
        for key, value in sorted(self.parameters.items()):
            lines.append(f"parameters {{ key: {_quoted(key)} value: {{ string_value: {_quoted(value)} }} }}")
        return "\n".join(lines) + "\n"


def embedding_tensors(contract: ModelContract) -> tuple[tuple[TensorConfig, ...], tuple[TensorConfig, ...]]:
    """The recognition model's inputs and output as Triton serves them: the dictionary is never an input."""
    return (
        (image_tensor(contract), TensorConfig(OCCLUSION_INPUT, "float32", (contract.num_cells,))),
        (TensorConfig(EMBEDDING_OUTPUT, "float32", (contract.embedding_size,)),),
    )


def features_tensors(contract: ModelContract) -> tuple[tuple[TensorConfig, ...], tuple[TensorConfig, ...]]:
    """The trunk model's: the image in, the feature map (C, H, W) before the mask out."""
    return (image_tensor(contract),), (TensorConfig(FEATURES_OUTPUT, "float32", tuple(contract.feature_shape)),)


def faces_tensors(contract: ModelContract) -> tuple[tuple[TensorConfig, ...], tuple[TensorConfig, ...]]:
    """The whole photo pipeline's (python kind, one photo per request): an encoded photo and the smallest face
    side in; each face's box, score, landmarks and embedding out (no face: zero rows)."""
    return (
        (TensorConfig(PHOTO_INPUT, "bytes", (1,)), TensorConfig(MIN_FACE_INPUT, "float32", (1,))),
        (
            TensorConfig(BOXES_OUTPUT, "float32", (-1, 4)),
            TensorConfig(SCORES_OUTPUT, "float32", (-1,)),
            TensorConfig(LANDMARKS_OUTPUT, "float32", (-1, 5, 2)),
            TensorConfig(EMBEDDING_OUTPUT, "float32", (-1, contract.embedding_size)),
        ),
    )


def detector_tensors(net: str) -> tuple[tuple[TensorConfig, ...], tuple[TensorConfig, ...]]:
    """One MTCNN net's whole tensors (served with max_batch_size 0: a client sends one pyramid level, or all
    the crops of a stage, per request)."""
    if net == "pnet":
        return (
            (TensorConfig(DETECTOR_IMAGE_INPUT, "float32", (-1, 3, -1, -1)),),
            (
                TensorConfig(BOX_OUTPUT, "float32", (-1, 4, -1, -1)),
                TensorConfig(PROBABILITY_OUTPUT, "float32", (-1, -1, -1)),
            ),
        )
    side = RNET_SIZE if net == "rnet" else ONET_SIZE
    outputs = [TensorConfig(BOX_OUTPUT, "float32", (-1, 4)), TensorConfig(PROBABILITY_OUTPUT, "float32", (-1,))]
    if net == "onet":
        outputs.append(TensorConfig(LANDMARK_OUTPUT, "float32", (-1, 10)))
    return (TensorConfig(DETECTOR_IMAGE_INPUT, "float32", (-1, 3, side, side)),), tuple(outputs)


def image_tensor(contract: ModelContract) -> TensorConfig:
    dtype = "uint8" if contract.image_layout == "nhwc-uint8" else "float32"
    return TensorConfig(IMAGE_INPUT, dtype, tuple(contract.image_shape))


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    """1, 2, 4, ... within [low, high], and ``high`` itself: the batch sizes the dynamic batcher prefers."""
    sizes, size = [], 1
    while size <= high:
        if size >= low:
            sizes.append(size)
        size *= 2
    return tuple(sizes) if sizes and sizes[-1] == high else (*sizes, high)


def _tensors(kind: str, tensors: tuple[TensorConfig, ...]) -> list[str]:
    lines = [f"{kind} ["]
    for index, tensor in enumerate(tensors):
        dims = ", ".join(str(d) for d in tensor.dims)
        separator = "," if index < len(tensors) - 1 else ""
        lines.append(
            f"  {{ name: {_quoted(tensor.name)} data_type: {TRITON_TYPES[tensor.dtype]} dims: [ {dims} ] }}{separator}"
        )
    return [*lines, "]"]


def _quoted(text: str) -> str:
    """A protobuf text-format string literal (JSON's escaping is a subset it reads)."""
    return json.dumps(text, ensure_ascii=False)
