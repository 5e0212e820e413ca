"""What the exporter, the parity checks and the benchmarks need of a recognition network.

Two networks have it: the LResNet-IR family (``pdsn.model.network``, 112x96 crops) and dlib's face
ResNet v1 (``pdsn.model.dlib_resnet``, 150x150 chips). Each fixes its part of the bundle's contract
(input size, normalisation, grid, alignment, feature map, embedding size) and gives its head after the
mask as one Linear map, which keeps the gallery's "trunk once, head per pattern" exact.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class NetworkArchitecture(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def feature_shape(self) -> tuple[int, int, int]: ...

    @property
    def embedding_size(self) -> int: ...

    def to_dict(self) -> dict: ...


class RecognitionNetwork(Protocol):
    @property
    def architecture(self) -> NetworkArchitecture: ...

    def normalise(self, faces: np.ndarray) -> torch.Tensor:
        """uint8 NHWC faces -> the network's float NCHW input."""
        ...

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map that the mask dictionary covers."""
        ...

    def deploy_head(self) -> nn.Linear:
        """The head after the mask as one Linear over the flattened feature map."""
        ...

    def contract_fields(self) -> dict:
        """The ModelContract fields this network fixes."""
        ...

    def eval(self) -> RecognitionNetwork: ...

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...
