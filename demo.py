"""``pdsn demo``: the main job on the embedded default model, start to finish, in plain words.

export (seeded LResNet50E-IR + synthetic dictionary) -> parity against PyTorch -> FP16 and INT8
variants with their gates -> the torch-free runtime embeds and verifies faces -> the runtime's
CPU paths timed side by side with PyTorch eager.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pdsn.model.grid import CELL_X_BOUNDS, CELL_Y_BOUNDS, SUNGLASSES_CELLS

VARIANT_PRECISIONS = ("fp16", "int8")
# Calibration for the default model's INT8 variant: quick, since untrained weights cannot meet
# the INT8 gate anyway; trained models are quantized with `pdsn quantize` (entropy, 512 faces).
DEMO_CALIBRATION = {"calib": "synthetic", "method": "minmax", "samples": 64, "holdout": 32}


def prepare_default_bundle(out: Path, architecture_name: str, reuse: bool, progress: bool = True) -> tuple[dict, dict]:
    """Export the default model to ``out`` and add its variants; returns (export parity, variants).

    The default weights are untrained, so a variant that misses its gate is still written, marked
    as failed: the runtime refuses it for serving, and the benchmark measures it as a timing proxy.
    """
    from pdsn.calib.variants import VariantRequest, add_variant
    from pdsn.export.bundle_writer import ExportRequest, export_bundle
    from pdsn.model.bundle_format import read_manifest
    from pdsn.model.network import architecture_by_name

    architecture = architecture_by_name(architecture_name)
    existing = read_manifest(out) if (out / "manifest.json").is_file() else None
    if out.is_dir() and any(out.iterdir()) and (existing is None or existing["model"]["weights"] != "demo"):
        raise FileExistsError(f"--out {out} holds something other than the demo bundle; choose another directory")
    fits = existing is not None and existing["model"]["architecture"]["name"] == architecture.name
    if reuse and fits and set(VARIANT_PRECISIONS) <= set(existing["variants"]):
        return {}, existing["variants"]
    parity = export_bundle(ExportRequest(out=out, architecture=architecture, overwrite=existing is not None)).parity
    variants = {
        precision: add_variant(VariantRequest(out, precision, enforce_gate=False, progress=progress, **DEMO_CALIBRATION))
        for precision in VARIANT_PRECISIONS
    }
    return parity, variants


def run_demo(out: Path, architecture_name: str) -> int:
    from pdsn.bench.report import terminal_table
    from pdsn.bench.runner import BenchConfig, run_benchmark
    from pdsn.export.parity import format_parity_table

    print(f"pdsn-deploy demo: {architecture_name}, embedded demo weights (seeded, untrained) "
          f"and a synthetic mask dictionary\n")
    started = time.perf_counter()
    parity, variants = prepare_default_bundle(out, architecture_name, reuse=False)
    print(f"[1/5] exported {out}/ ({time.perf_counter() - started:.0f} s with variants): model.onnx "
          f"with one ai.pdsn::FdmGatherMul node, dictionary.npy, manifest.json")
    print("      ONNX Runtime vs PyTorch on the same faces (gate: cosine >= 0.99999):")
    print(_indent(format_parity_table(parity), 6))
    print("\n[2/5] precision variants against the FP32 model on held-out faces:")
    for precision, entry in variants.items():
        p = entry["parity"]
        verdict = "meets its gate" if p["passed"] else (
            "misses its gate (untrained weights quantize badly): kept for timing only, the runtime "
            "will not serve it")
        print(f"      {precision}: cosine min {p['cosine_min']:.5f}, mean {p['cosine_mean']:.5f}, "
              f"p1 {p['cosine_p1']:.5f}; gate {p['gate']}: {verdict}")

    from pdsn.model.sample_faces import seeded_faces
    from pdsn.runtime import Recognizer

    faces = seeded_faces(8, seed=2026)
    with Recognizer.open(out) as recognizer:
        info = recognizer.backend_info
        embeddings = recognizer.embed(faces)
        print(f"\n[3/5] runtime: {info['backend']} {info['version']} on {info['device']}, precision "
              f"'auto' chose {recognizer.precision} (the runtime never imports torch): "
              f"{embeddings.shape[0]} faces -> embeddings of {embeddings.shape[1]}")
        _show_verification(recognizer, faces)

    print("\n[5/5] throughput and latency, end to end from uint8 crops (batch 1 and 8):")
    result = run_benchmark(out, BenchConfig(batches=(1, 8), seconds=2.0, min_iterations=3), progress=False)
    print(_indent(terminal_table(result), 6))
    print("\nThe demo weights are untrained: scores show the mechanics, not recognition accuracy, and "
          "INT8 rows time a variant that missed its gate. Export and quantize your own checkpoint with "
          "`pdsn export --checkpoint CKPT --dictionary DIR --out B` and `pdsn quantize --bundle B --calib FACES`.")
    return 0


def _show_verification(recognizer, faces: np.ndarray) -> None:
    clean, other = faces[0], faces[1]
    occluded = clean.copy()
    x0, x1 = CELL_X_BOUNDS[0], CELL_X_BOUNDS[4]
    y0, y1 = CELL_Y_BOUNDS[2], CELL_Y_BOUNDS[3]
    occluded[y0:y1, x0:x1] = 20  # dark "sunglasses" across grid row 2, cells 10..13
    plain = recognizer.verify(clean, occluded)
    masked = recognizer.verify(clean, occluded, occlusion_b=list(SUNGLASSES_CELLS))
    different = recognizer.verify(other, occluded, occlusion_b=list(SUNGLASSES_CELLS))
    print("\n[4/5] verification, PDSN protocol (the occluded face's cells mask both faces):")
    print(f"      same face, clean vs sunglasses, no mask      cosine {plain.score:+.4f}")
    print(f"      same face, clean vs sunglasses, cells 10-13  cosine {masked.score:+.4f}")
    print(f"      other face vs sunglasses,       cells 10-13  cosine {different.score:+.4f}")


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())
