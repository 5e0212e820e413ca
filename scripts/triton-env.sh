#!/usr/bin/env bash
# A Python environment for a local Triton Inference Server that serves pdsn models (python backend).
#
#   scripts/triton-env.sh DIR        (PYTHON=python3.11 to choose the interpreter; default python3)
#
# The nvidia-pytriton wheel carries a tritonserver binary with the python backend and one backend
# stub per Python version. The stub embeds the Python whose `python3` comes first on PATH, so the
# server is started with DIR/bin first on PATH (tests/triton_harness.py does) and imports
# triton_python_backend_utils, numpy and pdsn.runtime from DIR. That stub returns empty outputs
# under numpy 2, hence numpy<2 here. pdsn itself is an editable install of this checkout.
#
# The stub of DIR's Python is copied into the wheel's backends/python folder (the stub finds its
# libraries relative to itself there). DIR/.pdsn-triton-env records this script's SHA-256 once
# everything is installed: a changed script means a stale environment. Exit status 3: the packages
# could not be installed (e.g. no access to the package registry).
set -euo pipefail
DIR=${1:?usage: scripts/triton-env.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.17" "Pillow>=10.0" || exit 3
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT" || exit 3
SERVER=$("$DIR/bin/python" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')
VERSION=$("$DIR/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cp "$SERVER/python_backend_stubs/$VERSION/triton_python_backend_stub" "$SERVER/backends/python/"
chmod +x "$SERVER/backends/python/triton_python_backend_stub" "$SERVER/bin/tritonserver"
sha256sum "$0" | cut -d' ' -f1 > "$DIR/.pdsn-triton-env"
