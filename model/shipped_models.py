"""The weights that ship with the package, by the names ``pdsn export --weights`` takes (no heavy imports).

- ``dlib`` (the default): dlib's face recognition ResNet v1, which its author released into the public
  domain, converted by ``pdsn import dlib``, with a PDSN dictionary learnt on real faces and the decision
  threshold measured on real pairs, both by ``scripts/dlib-default-model.sh`` (``model/default_dlib/``).
- ``demo``: the trained demo model, an LResNet-IR trained on SYNTHETIC faces (``pdsn.model.demo_weights``).
- ``seeded``: seeded timing weights of an architecture (``pdsn.model.demo_weights``).
"""

from __future__ import annotations

from pathlib import Path

DLIB_WEIGHTS, DEMO_WEIGHTS, SEEDED_WEIGHTS = "dlib", "demo", "seeded"
WEIGHTS = (DLIB_WEIGHTS, DEMO_WEIGHTS, SEEDED_WEIGHTS)

DLIB_DIR = Path(__file__).with_name("default_dlib")
DLIB_CHECKPOINT = DLIB_DIR / "model.pth"
DLIB_DICTIONARY = DLIB_DIR / "dictionary.npz"
DLIB_EVALUATION = DLIB_DIR / "evaluation.json"
DLIB_ESTIMATOR = DLIB_DIR / "occlusion_estimator.pth"  # trained on real chips by scripts/dlib-default-model.sh
DLIB_LABEL = (
    "dlib's face recognition ResNet v1 (public domain), 150x150 chips -> 128-d, with a PDSN dictionary learnt "
    "on real faces; its decision threshold and how it was measured are in the manifest's decision entry"
)
# The manifest's ``model.weights`` of models trained on synthetic faces only: their answers say so.
SYNTHETIC_WEIGHTS = ("trained-demo", "seeded")
