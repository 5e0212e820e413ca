"""dlib's face recognition ResNet v1 in PyTorch, built from the layers ``pdsn.model.dlib_format`` reads.

It computes what dlib computes: 150x150 RGB chips in, 128-d descriptors out. ``features`` runs every
layer up to the last residual block's feature map (256 x 2 x 2 at 150x150); ``head`` averages that
map and applies the bias-free dense layer. Residual additions zero-fill the smaller tensor to the
larger one's shape, as dlib's ``add_prev`` does: at 150x150 one down-sampling block adds a 3x3 map
to a 4x4 one, so this is not padding-free ResNet arithmetic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdsn.model.crop_alignment import DLIB_CHIP_150
from pdsn.model.dlib_format import FACE_RESNET_V1, INPUT_SIZE, DlibNetwork, LayerSpec, read_dlib_face_resnet
from pdsn.model.grid import grid_for
from pdsn.model.network import MaskGenerator

# dlib scales pixels by 1/256 after subtracting its means (a power of two, so the contract's
# ``x / 256 - mean / 256`` is the same float as dlib's ``(x - mean) / 256``).
PIXEL_SCALE = 256.0


@dataclass(frozen=True)
class DlibArchitecture:
    """dlib's face ResNet v1 as a bundle's manifest names it; its layers are fixed (``FACE_RESNET_V1``)."""

    name: str = "dlib-face-resnet-v1"
    feature_shape: tuple[int, int, int] = (256, 2, 2)
    embedding_size: int = 128

    def to_dict(self) -> dict:
        return {"name": self.name, "feature_shape": list(self.feature_shape), "embedding_size": self.embedding_size}


DLIB_FACE_RESNET_V1 = DlibArchitecture()


class DlibResNet(nn.Module):
    """``forward(x) == head(features(x))``; ``x`` is float32 [N, 3, 150, 150] as ``normalise`` makes it."""

    means: torch.Tensor  # dlib's per-channel input means, a buffer

    def __init__(self, input_means: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        """dlib's ``anet_type`` with its layers' shapes and zero weights; ``from_network`` fills them in."""
        super().__init__()
        self.input_size = INPUT_SIZE
        self.architecture = DLIB_FACE_RESNET_V1
        self.register_buffer("means", torch.tensor(input_means, dtype=torch.float32))
        steps: list[nn.Module] = []
        channels, remembered = 3, {}
        for spec in FACE_RESNET_V1[:-2]:
            steps.append(_empty_step(spec, channels))
            if spec.kind == "con":
                channels = spec.outputs
            elif spec.kind == "tag":
                remembered[spec.tag] = channels
            elif spec.kind == "skip":
                channels = remembered[spec.tag]
            elif spec.kind == "add_prev":
                channels = max(channels, remembered[spec.tag])
        self.steps = nn.ModuleList(steps)
        self.fc = nn.Linear(channels, FACE_RESNET_V1[-1].outputs, bias=False)

    @classmethod
    def from_network(cls, network: DlibNetwork) -> DlibResNet:
        """The network as ``pdsn.model.dlib_format.read_dlib_face_resnet`` read it, weights included."""
        *trunk, pool, fc = network.layers
        if (pool.kind, pool.kernel, fc.kind) != ("avg_pool", (0, 0), "fc"):
            raise ValueError(
                f"the network ends with {pool.kind} {pool.kernel} then {fc.kind}; expected a whole-map "
                f"avg_pool (0, 0) then fc. Read it with pdsn.model.dlib_format.read_dlib_face_resnet"
            )
        model = cls(network.input_means)
        with torch.no_grad():
            for step, layer in zip(model.steps, trunk):
                if isinstance(step, nn.Conv2d):
                    assert step.bias is not None  # _empty_step makes every conv with a bias
                    step.weight.copy_(torch.from_numpy(layer.weight))
                    step.bias.copy_(torch.from_numpy(layer.bias))
                elif isinstance(step, _Affine):
                    step.gamma.copy_(torch.from_numpy(layer.weight).view(1, -1, 1, 1))
                    step.beta.copy_(torch.from_numpy(layer.bias).view(1, -1, 1, 1))
            model.fc.weight.copy_(torch.from_numpy(fc.weight))
        return model.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> DlibResNet:
        """The network of ``dlib_face_recognition_resnet_model_v1.dat``."""
        return cls.from_network(read_dlib_face_resnet(path))

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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last residual block's feature map, [N, 256, 2, 2] at 150x150: what the mask dictionary covers."""
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.features(x)
        if mask is not None:
            features = features * mask
        return self.head(features)

    def deploy_head(self) -> nn.Linear:
        """The head as one Linear over the flattened feature map: the average over the map's positions
        folded into the dense layer (each channel's weight split evenly over its positions), bias zero."""
        positions = self.architecture.feature_shape[1] * self.architecture.feature_shape[2]
        folded = nn.Linear(self.fc.in_features * positions, self.fc.out_features)
        with torch.no_grad():
            folded.weight.copy_(self.fc.weight.repeat_interleave(positions, dim=1) / positions)
            folded.bias.zero_()
        return folded

    def contract_fields(self) -> dict:
        """The contract's fields that this network fixes (see ``pdsn.model.bundle_format.ModelContract``)."""
        height, width = self.input_size
        return {
            "height": height,
            "width": width,
            "normalization": {
                "scale": PIXEL_SCALE,
                "mean": [float(m) / PIXEL_SCALE for m in self.means.tolist()],
                "std": 1.0,
            },
            "grid": grid_for(height, width),
            "alignment": DLIB_CHIP_150,
            "feature_shape": self.architecture.feature_shape,
            "embedding_size": self.architecture.embedding_size,
        }


class DlibPDSN(DlibResNet):
    """Stage-1 model on dlib's network: the network as published, frozen, plus one mask generator
    (keys ``sia.*``), as ``pdsn.model.network.PDSNNetwork`` is for an LResNet-IR network."""

    def __init__(self, input_means: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__(input_means)
        self.sia = MaskGenerator(self.architecture.feature_shape[0])


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


def _empty_step(spec: LayerSpec, channels: int) -> nn.Module:
    """The module for one layer of ``FACE_RESNET_V1`` taking ``channels`` channels, its parameters zero."""
    padding = 0 if spec.stride != 1 else spec.kernel // 2  # dlib's default padding
    if spec.kind == "con":
        conv = nn.Conv2d(channels, spec.outputs, spec.kernel, spec.stride, padding)
        nn.init.zeros_(conv.weight)
        assert conv.bias is not None  # nn.Conv2d has a bias unless bias=False
        nn.init.zeros_(conv.bias)
        return conv
    if spec.kind == "max_pool":
        return nn.MaxPool2d(spec.kernel, spec.stride, padding)
    if spec.kind == "avg_pool":
        # dlib averages only the window's part inside the map.
        return nn.AvgPool2d(spec.kernel, spec.stride, padding, count_include_pad=False)
    if spec.kind == "affine":
        return _Affine(np.ones(channels, dtype=np.float32), np.zeros(channels, dtype=np.float32))
    if spec.kind == "relu":
        return nn.ReLU()
    tags = {"tag": _Tag, "skip": _Skip, "add_prev": _AddPrev}
    if spec.kind in tags:
        return tags[spec.kind](spec.tag)
    raise ValueError(f"layer kind {spec.kind!r} is not one of dlib's face ResNet's: con, affine, relu, pools, tags")


def _add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b over the larger channels, rows and columns of each, the missing part of either read as 0."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]
    return _zero_filled(a, shape) + _zero_filled(b, shape)


def _zero_filled(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    channels, rows, cols = shape
    pads = (0, cols - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1])
    return F.pad(x, pads) if any(pads) else x
