"""dlib's face recognition ResNet v1 in PyTorch, built from the layers ``pdsn.model.dlib_format`` reads.

It computes what dlib computes: 150x150 RGB chips in, 128-d descriptors out. ``trunk`` runs every
layer up to the last residual block's feature map (256 x 2 x 2 at 150x150); ``head`` averages that
map and applies the bias-free dense layer. Residual additions zero-fill the smaller tensor to the
larger one's shape, as dlib's ``add_prev`` does: at 150x150 one down-sampling block adds a 3x3 map
to a 4x4 one, so this is not padding-free ResNet arithmetic.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdsn.model.dlib_format import DlibNetwork, Layer, read_dlib_face_resnet


class DlibResNet(nn.Module):
    """``forward(x) == head(trunk(x))``; ``x`` is float32 [N, 3, 150, 150] as ``normalise`` makes it."""

    def __init__(self, network: DlibNetwork) -> None:
        super().__init__()
        *trunk, pool, fc = network.layers
        if (pool.kind, pool.kernel, fc.kind) != ("avg_pool", (0, 0), "fc"):
            raise ValueError(
                f"the network ends with {pool.kind} {pool.kernel} then {fc.kind}; expected a whole-map "
                f"avg_pool (0, 0) then fc. Read it with pdsn.model.dlib_format.read_dlib_face_resnet"
            )
        self.input_size = network.input_size
        self.register_buffer("means", torch.tensor(network.input_means, dtype=torch.float32))
        self.steps = nn.ModuleList(_step(layer) for layer in trunk)
        self.fc = nn.Linear(fc.weight.shape[1], fc.outputs, bias=False)
        self.fc.weight.data.copy_(torch.from_numpy(fc.weight))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> DlibResNet:
        """The network of ``dlib_face_recognition_resnet_model_v1.dat``."""
        return cls(read_dlib_face_resnet(path))

    def normalise(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips [N, 150, 150, 3] to the network's input, as dlib's input layer does:
        ``(pixel - mean) / 256`` per channel, float32 [N, 3, 150, 150]."""
        chips = torch.as_tensor(chips)
        expected = (*self.input_size, 3)
        if chips.dtype != torch.uint8 or chips.ndim != 4 or tuple(chips.shape[1:]) != expected:
            raise ValueError(
                f"chips are {chips.dtype} {tuple(chips.shape)}; expected uint8 [N, {expected[0]}, {expected[1]}, 3] "
                f"RGB (dlib.get_face_chip's chips, stacked)"
            )
        pixels = chips.to(self.means.device).permute(0, 3, 1, 2).float()
        return (pixels - self.means.view(1, 3, 1, 1)) / 256

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The last residual block's feature map, [N, 256, 2, 2] at 150x150."""
        tagged = {}
        for step in self.steps:
            if isinstance(step, _Tag):
                tagged[step.tag] = x
            elif isinstance(step, _Skip):
                x = tagged[step.tag]
            elif isinstance(step, _AddPrev):
                x = _add_zero_filled(x, tagged[step.tag])
            else:
                x = step(x)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """dlib's avg_pool_everything then fc_no_bias: the 128-d descriptor (not normalised, as dlib's)."""
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class _Affine(nn.Module):
    """dlib's affine layer: a frozen batch norm, ``x * gamma + beta`` per channel."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(gamma).view(1, -1, 1, 1).clone())
        self.beta = nn.Parameter(torch.from_numpy(beta).view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class _TagStep(nn.Module):
    """A step that names a tag and has no parameters; the trunk's loop carries the tagged tensors."""

    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag


class _Tag(_TagStep):
    """Remembers its input under ``tag``."""


class _Skip(_TagStep):
    """Outputs the tensor remembered under ``tag``."""


class _AddPrev(_TagStep):
    """Adds the tensor remembered under ``tag``."""


def _step(layer: Layer) -> nn.Module:
    if layer.kind == "con":
        conv = nn.Conv2d(layer.weight.shape[1], layer.outputs, layer.kernel, layer.stride, layer.padding)
        conv.weight.data.copy_(torch.from_numpy(layer.weight))
        conv.bias.data.copy_(torch.from_numpy(layer.bias))
        return conv
    if layer.kind == "affine":
        return _Affine(layer.weight, layer.bias)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "max_pool":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    if layer.kind == "avg_pool":
        # dlib averages only the window's part inside the map.
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding, count_include_pad=False)
    tags = {"tag": _Tag, "skip": _Skip, "add_prev": _AddPrev}
    if layer.kind in tags:
        return tags[layer.kind](layer.tag)
    raise ValueError(f"layer kind {layer.kind!r} is not one of dlib's face ResNet's: con, affine, relu, pools, tags")


def _add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b over the larger channels, rows and columns of each, the missing part of either read as 0."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]
    return _zero_filled(a, shape) + _zero_filled(b, shape)


def _zero_filled(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    channels, rows, cols = shape
    pads = (0, cols - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1])
    return F.pad(x, pads) if any(pads) else x
