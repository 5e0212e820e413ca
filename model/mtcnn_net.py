"""MTCNN's P-, R- and O-Net in PyTorch, with facenet-pytorch's parameter names so its state dicts load strictly.

The layers are facenet-pytorch's; the outputs are shaped for export (see
``pdsn.model.detector_contract``): the softmax stays in the graph and only the face class's
probability is returned. The dense layers read the last conv's features in (W, H, C) order, as
the weights (ported from the original Caffe models) expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn


class PNet(nn.Module):
    """Proposal net, fully convolutional: (box_regression [N, 4, H', W'], face_probability [N, H', W'])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        probability = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), probability


class RNet(nn.Module):
    """Refinement net on 24x24 crops: (box_regression [N, 4], face_probability [N])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        probability = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return self.dense5_2(x), probability


class ONet(nn.Module):
    """Output net on 48x48 crops: (box_regression [N, 4], face_probability [N], landmarks [N, 10])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        probability = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return self.dense6_2(x), probability, self.dense6_3(x)


NETS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load_net(name: str, state_dict: Path | BinaryIO) -> nn.Module:
    """``name`` ("pnet", "rnet" or "onet") with the state dict in ``state_dict`` (a file or a binary stream), strictly, in eval mode."""
    if name not in NETS:
        raise ValueError(f"net must be one of {sorted(NETS)}, got {name!r}")
    state = torch.load(state_dict, map_location="cpu", weights_only=True)
    net = NETS[name]()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{getattr(state_dict, 'name', 'the given state dict')}: not a state dict of MTCNN's {name} in facenet-pytorch's layout ({exc}); "
            f"pass facenet-pytorch's data/{name}.pt"
        ) from None
    return net.eval()
