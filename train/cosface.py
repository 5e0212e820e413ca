"""The CosFace large-margin cosine classifier (the reference's ``MarginCosineProduct``).

Logits are ``s * cos(theta_j)`` for every class ``j``, with the margin subtracted on the target
class during training: ``s * (cos(theta_y) - m)``. Its only parameter is ``weight``
[classes, in_features], so its state dict is the bare ``{'weight': ...}`` the reference saves next
to the model checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MarginCosineProduct(nn.Module):
    """CosFace head: scaled cosine logits; with labels, the target's is lowered by margin ``m``."""

    def __init__(self, in_features: int, out_features: int, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not s > 0:
            raise ValueError(f"s (the logit scale) must be > 0, got {s!r}")
        if not 0 <= m < 1:
            raise ValueError(f"m (the cosine margin) must be in [0, 1), got {m!r}")
        self.in_features, self.out_features = in_features, out_features
        self.s, self.m = float(s), float(m)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre, (N, classes)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_features:
            raise ValueError(f"embeddings must have shape (N, {self.in_features}), got {tuple(embeddings.shape)}")
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Training logits (margin on the target) given ``labels``; plain ``s * cos`` for None."""
        cosine = self.cosine(embeddings)
        if labels is None:
            return self.s * cosine
        if labels.shape != (embeddings.shape[0],) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"labels must be an integer tensor of shape ({embeddings.shape[0]},), got dtype "
                f"{labels.dtype} shape {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.out_features):
            raise ValueError(
                f"labels must be class ids in 0..{self.out_features - 1}, got values in "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        margin = F.one_hot(labels.long(), self.out_features).to(cosine.dtype) * self.m
        return self.s * (cosine - margin)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, s={self.s}, m={self.m}"
