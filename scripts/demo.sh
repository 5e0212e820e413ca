#!/usr/bin/env bash
# The main job on a fresh machine: install, then export -> variants -> verify -> accuracy on the
# embedded default model (trained on synthetic faces), and latency on LResNet50E-IR.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of torch first, so the `export` extra's torch requirement is already satisfied
# and pip never resolves a multi-GB CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[export,openvino]"
exec pdsn demo "$@"
