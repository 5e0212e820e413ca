"""The models that ship with the package, so the main job runs with nothing downloaded.

* dlib's face ResNet (the default; ``pdsn.model.shipped_models``).
* The trained demo model: a small LResNet-IR trained end to end on SYNTHETIC faces by
  `pdsn train-demo`, with its 25 mean masks and binarised dictionary. Its embeddings identify
  synthetic identities; it has never seen a real face. The training pipeline's tests use it.
* Seeded timing weights for any architecture (LResNet50E-IR for the benchmarks, since speed does
  not depend on the weights): the reference initialisation with BN affine parameters and PReLU
  slopes jittered, and every BN layer's running statistics measured on seeded sample faces, so
  activations are in the range a trained network would produce. They identify no one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pdsn.model.dictionary import MaskDictionary, binarize_by_tau, synthetic_mean_masks
from pdsn.model.network import LRESNET50E_IR, Architecture, LResNetIR, normalize_faces
from pdsn.model.sample_faces import seeded_faces

# `pdsn train-demo --out model/default_model` reproduces these files bit for bit.
TRAINED_DEMO_DIR = Path(__file__).with_name("default_model")
TRAINED_DEMO_CHECKPOINT = TRAINED_DEMO_DIR / "model.pth"
TRAINED_DEMO_DICTIONARY = TRAINED_DEMO_DIR / "dictionary.npz"

TRAINED_DEMO_LABEL = (
    "TRAINED DEMO MODEL: lresnet-ir-tiny trained on SYNTHETIC faces by `pdsn train-demo`; it has "
    "never seen a real face and is not for recognising people"
)
SEEDED_WEIGHTS_LABEL = (
    "SEEDED WEIGHTS: random initialisation with BN statistics measured on synthetic faces; not "
    "trained, for timing only, the embeddings do not identify anyone"
)


def seeded_model(architecture: Architecture = LRESNET50E_IR, seed: int = 0, calibration_faces: int = 32) -> LResNetIR:
    """Build the seeded timing network in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LResNetIR(architecture)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    module.weight.uniform_(0.7, 1.3)
                    module.bias.normal_(0.0, 0.1)
                elif isinstance(module, nn.PReLU):
                    module.weight.uniform_(0.1, 0.4)
    _measure_bn_statistics(model, seeded_faces(calibration_faces, seed=seed + 1))
    return model.eval()


def seeded_dictionary(architecture: Architecture = LRESNET50E_IR, seed: int = 0, tau: float = 0.25) -> MaskDictionary:
    """The seeded stand-in dictionary that goes with the seeded timing weights."""
    mean_masks = synthetic_mean_masks(seed, architecture.feature_shape)
    return MaskDictionary(
        masks=binarize_by_tau(mean_masks, tau),
        tau=tau,
        threshold=None,
        source=f"synthetic demo dictionary (seed {seed}); not extracted from a trained PDSN",
    )


def _measure_bn_statistics(model: LResNetIR, faces: np.ndarray, batch: int = 16) -> None:
    """Replace every BN layer's running statistics by their average over ``faces``."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all calibration batches
    model.train()
    model.fc[1].eval()  # dropout off: the head's statistics must match inference
    with torch.no_grad():
        for start in range(0, len(faces), batch):
            model(normalize_faces(faces[start : start + batch]))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
