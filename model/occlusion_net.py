"""The occlusion estimator: a small standalone CNN that predicts which of the 25 grid cells are occluded.

It looks only at the aligned crop, so it runs before the recognition model on any backend and
tells it which FDM items to apply. Four strided stages of two 3x3 convolutions (BN, ReLU) take the
crop (112x96, or dlib's 150x150 chip: ``EstimatorArchitecture.input_size``) to a 7x6 (10x10) map; a
1x1 convolution and one linear layer map that to 25 logits, one per cell (1 = occluded). Input:
``(x / 255 - 0.5) / 0.5`` (``normalize_faces``), whatever the recognition model's normalisation.

A trained estimator is two files side by side: ``NAME.pth`` (the architecture and the state dict,
read with ``weights_only=True``) and ``NAME.json`` (the per-cell thresholds chosen on validation,
the SHA-256 of the ``.pth``, the training settings and the validation metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import sha256_file
from pdsn.model.demo_weights import TRAINED_DEMO_DIR
from pdsn.model.estimator_contract import (
    ESTIMATOR_FORMAT,
    ESTIMATOR_FORMAT_VERSION,
    cells_from_probabilities,
    check_thresholds,
)
from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH, NUM_CELLS
from pdsn.model.network import normalize_faces

# The estimator that ships with the package, trained by `pdsn train-occlusion --out model/default_model`.
SHIPPED_ESTIMATOR = TRAINED_DEMO_DIR / "occlusion_estimator.pth"


# Keys of the .json that save_estimator writes itself; everything else is the training record.
_DESCRIPTION_KEYS = ("format", "format_version", "weights", "architecture", "thresholds")


class EstimatorFileError(PdsnError, ValueError):
    """A file that is not a trained occlusion estimator, or whose two halves do not belong together."""


@dataclass(frozen=True)
class EstimatorArchitecture:
    """Channel widths of the four stride-2 stages and of the 1x1 convolution before the linear head."""

    widths: tuple[int, int, int, int] = (16, 32, 48, 64)
    head_channels: int = 16
    input_size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)  # (height, width) of the crops it reads

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or any(int(w) < 1 for w in self.widths) or int(self.head_channels) < 1:
            raise ValueError(
                f"estimator widths must be 4 positive channel counts and head_channels positive, got "
                f"widths={self.widths!r}, head_channels={self.head_channels!r}"
            )

    @property
    def map_shape(self) -> tuple[int, int]:
        """(H, W) of the last stage's map: four halvings of the input."""
        height, width = self.input_size
        for _ in self.widths:
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "head_channels": self.head_channels, "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, data: dict) -> EstimatorArchitecture:
        """An architecture as ``to_dict`` wrote it; one written before ``input_size`` reads 112x96 crops."""
        return cls(
            widths=tuple(int(w) for w in data["widths"]),  # type: ignore[arg-type]
            head_channels=int(data["head_channels"]),
            input_size=tuple(int(n) for n in data.get("input_size", (CROP_HEIGHT, CROP_WIDTH))),  # type: ignore[arg-type]
        )


class OcclusionNet(nn.Module):
    """Normalised float NCHW crops (N, 3, H, W) of the architecture's input size -> per-cell logits (N, 25)."""

    def __init__(self, architecture: EstimatorArchitecture = EstimatorArchitecture()) -> None:
        super().__init__()
        self.architecture = architecture
        layers: list[nn.Module] = []
        channels = 3
        for width in architecture.widths:
            layers += [*_conv(channels, width, stride=2), *_conv(width, width, stride=1)]
            channels = width
        layers += [nn.Conv2d(channels, architecture.head_channels, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        height, width = architecture.map_shape
        self.head = nn.Linear(architecture.head_channels * height * width, NUM_CELLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


@dataclass
class TrainedEstimator:
    """A trained network, its per-cell thresholds (float32 (25,), each in (0, 1)) and its record."""

    model: OcclusionNet
    thresholds: np.ndarray
    record: dict = field(default_factory=dict)
    name: str = "occlusion estimator"

    def __post_init__(self) -> None:
        self.thresholds = check_thresholds(self.thresholds)
        self.model.eval()

    def probabilities(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Per-cell occlusion probabilities of uint8 (N, H, W, 3) crops, float32 (N, 25)."""
        return predict_probabilities(self.model, images, batch_size)

    def predict_cells(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 25) occlusion vectors: 1 where the probability reaches the cell's threshold."""
        return cells_from_probabilities(self.probabilities(images), self.thresholds)


@torch.no_grad()
def predict_probabilities(model: OcclusionNet, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Sigmoid of the logits for uint8 NHWC crops, in batches; the model is put in eval mode."""
    model.eval()
    if len(images) == 0:
        return np.zeros((0, NUM_CELLS), dtype=np.float32)
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return torch.cat([torch.sigmoid(model(normalize_faces(chunk))) for chunk in chunks]).numpy()


def save_estimator(path: str | Path, estimator: TrainedEstimator) -> tuple[Path, Path]:
    """Write ``path`` (``.pth``: architecture + state dict) and its ``.json`` (thresholds, hash, record)."""
    weights = Path(path)
    if weights.suffix != ".pth":
        raise ValueError(f"estimator path must end in .pth (its .json is written beside it), got {str(weights)!r}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": ESTIMATOR_FORMAT,
            "format_version": ESTIMATOR_FORMAT_VERSION,
            "architecture": estimator.model.architecture.to_dict(),
            "state_dict": estimator.model.state_dict(),
        },
        weights,
    )
    sidecar = weights.with_suffix(".json")
    description = {
        "format": ESTIMATOR_FORMAT,
        "format_version": ESTIMATOR_FORMAT_VERSION,
        "weights": {"file": weights.name, "sha256": sha256_file(weights)},
        "architecture": estimator.model.architecture.to_dict(),
        "thresholds": [round(float(t), 6) for t in estimator.thresholds],
        **estimator.record,
    }
    sidecar.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return weights, sidecar


def load_estimator(path: str | Path = SHIPPED_ESTIMATOR) -> TrainedEstimator:
    """Read a ``.pth`` and its ``.json`` written by ``save_estimator``; refuses a pair that does not match."""
    weights = Path(path)
    sidecar = weights.with_suffix(".json")
    for file, what in ((weights, "weights (.pth)"), (sidecar, "thresholds and record (.json)")):
        if not file.is_file():
            raise FileNotFoundError(
                f"occlusion estimator {what} {str(file)!r} does not exist; `pdsn train-occlusion --out DIR` writes "
                "both occlusion_estimator.pth and occlusion_estimator.json"
            )
    try:
        description = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EstimatorFileError(f"{sidecar} is not valid JSON ({error}); re-train or restore the file") from None
    if (description.get("format"), description.get("format_version")) != (ESTIMATOR_FORMAT, ESTIMATOR_FORMAT_VERSION):
        raise EstimatorFileError(
            f"{sidecar} has format {description.get('format')!r} version {description.get('format_version')!r}, "
            f"expected {ESTIMATOR_FORMAT!r} version {ESTIMATOR_FORMAT_VERSION}"
        )
    recorded = description.get("weights", {}).get("sha256")
    actual = sha256_file(weights)
    if recorded != actual:
        raise EstimatorFileError(
            f"{weights} has SHA-256 {actual}, but {sidecar} records {recorded}: the thresholds were chosen for "
            "other weights. Keep the .pth and .json that `pdsn train-occlusion` wrote together"
        )
    thresholds = check_thresholds(description.get("thresholds"), f"{sidecar.name} thresholds")
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        architecture = EstimatorArchitecture.from_dict(saved["architecture"])
        model = OcclusionNet(architecture)
        model.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise EstimatorFileError(f"{weights} is not an occlusion estimator checkpoint: {error}") from None
    record = {k: v for k, v in description.items() if k not in _DESCRIPTION_KEYS}
    return TrainedEstimator(model, thresholds, record, name=f"occlusion estimator ({weights.name})")


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass (2 per multiply-add) of every Conv2d and Linear, for one input of ``input_shape``.

    BN, activations and additions are left out: they are a small share for these networks and
    fold into or fuse with the convolutions at inference.
    """
    total = 0

    def conv(layer: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        total += 2 * per_output * output.numel()

    def linear(layer: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * layer.in_features * output.numel()

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    return total


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def architecture_summary(architecture: EstimatorArchitecture) -> dict:
    """Architecture, parameters and FLOPs per image, for records and reports."""
    model = OcclusionNet(architecture)
    return {
        **architecture.to_dict(),
        "parameters": parameter_count(model),
        "flops_per_image": count_flops(model, (3, *architecture.input_size)),
    }


def _conv(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]
