"""Test data factories: a tiny LResNet-IR family member with random BN statistics, dictionaries."""

from __future__ import annotations

import numpy as np
import torch

from pdsn.calib.gates import PrecisionGate
from pdsn.model.network import Architecture, LResNetIR

TINY = Architecture("lresnet-ir-tiny", (1, 2, 1, 1), (8, 8, 16, 16, 32))
# Random weights quantize badly: tests of structure, not accuracy, relax the INT8 gate.
LENIENT_GATES = {"int8": PrecisionGate(mean_cosine=0.0), "fp16": PrecisionGate(min_cosine=0.9995)}


def quick_variant(bundle, precision: str = "int8", **changes):
    """A variant request quick enough for tests: a few synthetic faces, min-max calibration, the lenient gates."""
    from pdsn.calib.variants import VariantRequest

    settings = {"calib": "synthetic", "method": "minmax", "samples": 16, "holdout": 8, "gates": LENIENT_GATES}
    return VariantRequest(bundle, precision, progress=False, **{**settings, **changes})


def randomized_model(architecture: Architecture = TINY, seed: int = 0) -> LResNetIR:
    """A network whose every BN layer has random affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LResNetIR(architecture)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.5)
    return model.eval()


def random_binary_dictionary(feature_shape, seed: int = 0, keep: float = 0.75) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((25, *feature_shape)) < keep).astype(np.float32)
