"""The LResNet-IR recognition network and the PDSN mask generator.

Module and parameter names match the reference checkpoints exactly (docs/architecture.md, "The reference method"), so a
reference ``model_state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from pdsn.model.crop_alignment import SIMILARITY_112X96
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, grid_for

EMBEDDING_SIZE = 512


@dataclass(frozen=True)
class Architecture:
    """Depth and width of an LResNet-IR network.

    ``widths`` has five entries: the stem (``conv1``) and the four stages ``layer1..layer4``.
    """

    name: str
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int, int]
    embedding_size: int = EMBEDDING_SIZE
    dropout: float = 0.4

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or any(int(n) < 1 for n in self.layers):
            raise ValueError(f"architecture layers must be 4 positive block counts, got {self.layers!r}")
        if len(self.widths) != 5 or any(int(w) < 1 for w in self.widths):
            raise ValueError(
                f"architecture widths must be 5 positive channel counts (stem + 4 stages), got {self.widths!r}"
            )

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the trunk output that the mask dictionary covers."""
        height, width = CROP_HEIGHT, CROP_WIDTH
        for _ in range(4):
            height, width = (height + 1) // 2, (width + 1) // 2
        return (self.widths[4], height, width)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(
            name=str(data["name"]),
            layers=tuple(int(n) for n in data["layers"]),  # type: ignore[arg-type]
            widths=tuple(int(w) for w in data["widths"]),  # type: ignore[arg-type]
            embedding_size=int(data.get("embedding_size", EMBEDDING_SIZE)),
            dropout=float(data.get("dropout", 0.4)),
        )


LRESNET50E_IR = Architecture("lresnet50e-ir", (3, 4, 14, 3), (64, 64, 128, 256, 512))
# One block per stage at half width.
LRESNET10E_IR = Architecture("lresnet10e-ir", (1, 1, 1, 1), (32, 32, 64, 128, 256))
# One block per stage, narrow (64x7x6 features): the trained demo model (`pdsn train-demo`), whose
# whole training pipeline runs on a 2-core CPU in minutes.
LRESNET_IR_TINY = Architecture("lresnet-ir-tiny", (1, 1, 1, 1), (8, 8, 16, 32, 64))

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (LRESNET50E_IR, LRESNET10E_IR, LRESNET_IR_TINY)}


def architecture_by_name(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}") from None


class BlockIR(nn.Module):
    """Improved residual block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN, plus shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, dim_match: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.prelu1 = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if not dim_match:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu1(self.bn2(self.conv1(self.bn1(x))))))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class LResNetIR(nn.Module):
    """The recognition network: trunk -> (mask) -> BN1d/Dropout/Linear/BN1d head -> embedding."""

    def __init__(self, architecture: Architecture = LRESNET50E_IR) -> None:
        super().__init__()
        self.architecture = architecture
        widths = architecture.widths
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu1 = nn.PReLU(widths[0])
        self.layer1 = _make_stage(widths[0], widths[1], architecture.layers[0])
        self.layer2 = _make_stage(widths[1], widths[2], architecture.layers[1])
        self.layer3 = _make_stage(widths[2], widths[3], architecture.layers[2])
        self.layer4 = _make_stage(widths[3], widths[4], architecture.layers[3])
        flat = _product(architecture.feature_shape)
        self.fc = nn.Sequential(
            nn.BatchNorm1d(flat),
            nn.Dropout(p=architecture.dropout),
            nn.Linear(flat, architecture.embedding_size),
            nn.BatchNorm1d(architecture.embedding_size),
        )
        _init_like_reference(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float NCHW faces -> the (N, C, 7, 6) feature map."""
        x = self.prelu1(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.flatten(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.features(x)
        if mask is not None:
            features = features * mask
        return self.head(features)

    @staticmethod
    def normalise(faces: np.ndarray) -> torch.Tensor:
        """uint8 NHWC faces -> this network's input (``normalize_faces``)."""
        return normalize_faces(faces)

    def deploy_head(self) -> nn.Linear:
        """The head as one Linear over the flattened feature map (its BatchNorm1d layers folded)."""
        return fold_head(self.fc)

    def contract_fields(self) -> dict:
        """The contract's fields that this network fixes (see ``pdsn.model.bundle_format.ModelContract``)."""
        return {
            "height": CROP_HEIGHT,
            "width": CROP_WIDTH,
            "normalization": {"scale": 255.0, "mean": 0.5, "std": 0.5},
            "grid": grid_for(CROP_HEIGHT, CROP_WIDTH),
            "alignment": SIMILARITY_112X96,
            "feature_shape": self.architecture.feature_shape,
            "embedding_size": self.architecture.embedding_size,
        }


def fold_head(fc: nn.Sequential) -> nn.Linear:
    """Fold ``BN1d -> Dropout -> Linear -> BN1d`` (eval mode) into one Linear, computed in float64."""
    bn_in, linear, bn_out = fc[0], fc[2], fc[3]
    if not (isinstance(bn_in, nn.BatchNorm1d) and isinstance(linear, nn.Linear) and isinstance(bn_out, nn.BatchNorm1d)):
        raise TypeError(f"fold_head needs BatchNorm1d -> Dropout -> Linear -> BatchNorm1d, got {fc}")
    scale_in, shift_in = _bn_affine(bn_in)
    scale_out, shift_out = _bn_affine(bn_out)
    weight = linear.weight.detach().double()
    bias = linear.bias.detach().double()
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_((scale_out[:, None] * weight * scale_in[None, :]).float())
        folded.bias.copy_((scale_out * (weight @ shift_in + bias) + shift_out).float())
    return folded


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} tracks no running statistics, so it cannot be folded into a Linear")
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.double() * scale
    return scale, shift


class MaskGenerator(nn.Sequential):
    """The PDSN mask generator (``sia``): |f_clean - f_occ| -> Conv -> PReLU -> BN -> Sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.PReLU(channels),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )


class PDSNNetwork(LResNetIR):
    """Stage-1 model: the recognition network plus one mask generator (keys ``sia.*``)."""

    def __init__(self, architecture: Architecture = LRESNET50E_IR) -> None:
        super().__init__(architecture)
        self.sia = MaskGenerator(architecture.feature_shape[0])

    def pairwise_mask(
        self, clean: torch.Tensor, occluded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (mask, masked clean features, masked occluded features)."""
        f_clean, f_occ = self.features(clean), self.features(occluded)
        mask = self.sia(torch.abs(f_clean - f_occ))
        return mask, f_clean * mask, f_occ * mask


def normalize_faces(faces: np.ndarray) -> torch.Tensor:
    """uint8 NHWC faces -> normalised, contiguous float NCHW, as the reference's data loader gives them."""
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).to(torch.float32)
    return ((x / 255.0 - 0.5) / 0.5).contiguous()


def _make_stage(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    first = BlockIR(inplanes, planes, stride=2, dim_match=False)
    rest = [BlockIR(planes, planes, stride=1, dim_match=True) for _ in range(1, blocks)]
    return nn.Sequential(first, *rest)


def _init_like_reference(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _product(shape: tuple[int, ...]) -> int:
    result = 1
    for n in shape:
        result *= n
    return result
