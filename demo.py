"""``pdsn demo``: the main job on the embedded default model, start to finish, in plain words.

export (seeded LResNet50E-IR + synthetic dictionary) -> parity check against PyTorch -> the
torch-free runtime embeds and verifies faces -> latency of the runtime against PyTorch eager.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pdsn.bench.machine import describe_machine
from pdsn.bench.timing import measure
from pdsn.model.grid import CELL_X_BOUNDS, CELL_Y_BOUNDS, SUNGLASSES_CELLS


def run_demo(out: Path, architecture_name: str) -> int:
    from pdsn.export.bundle_writer import ExportRequest, export_bundle
    from pdsn.export.parity import format_parity_table
    from pdsn.model.bundle_format import read_manifest
    from pdsn.model.network import architecture_by_name

    architecture = architecture_by_name(architecture_name)
    replace = out.is_dir() and any(out.iterdir())
    if replace and read_manifest(out).get("model", {}).get("weights") != "demo":
        raise FileExistsError(f"--out {out} holds a bundle that is not the demo's; choose another directory")

    print(f"pdsn-deploy demo: {architecture.name}, embedded demo weights (seeded, untrained) "
          f"and a synthetic mask dictionary\n")
    started = time.perf_counter()
    result = export_bundle(ExportRequest(out=out, architecture=architecture, overwrite=replace))
    print(f"[1/4] exported {out}/ in {time.perf_counter() - started:.1f} s: model.onnx with one "
          f"ai.pdsn::FdmGatherMul node, dictionary.npy, manifest.json")
    print("      ONNX Runtime vs PyTorch on the same faces (gate: cosine >= 0.99999):")
    print(_indent(format_parity_table(result.parity), 6))

    from pdsn.model.sample_faces import seeded_faces
    from pdsn.runtime import Recognizer

    faces = seeded_faces(8, seed=2026)
    with Recognizer.open(out) as recognizer:
        info = recognizer.backend_info
        embeddings = recognizer.embed(faces)
        print(f"\n[2/4] runtime: {info['backend']} {info['version']} on {info['device']} "
              f"(the runtime never imports torch), {embeddings.shape[0]} faces -> embeddings of "
              f"{embeddings.shape[1]}")
        _show_verification(recognizer, faces)
        _show_latency(recognizer, result.bundle, architecture, faces)
    print("\nThe demo weights are untrained: scores show the mechanics, not recognition accuracy. "
          "Export your own checkpoint with `pdsn export --checkpoint CKPT --dictionary DIR --out B`.")
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
    print("\n[3/4] verification, PDSN protocol (the occluded face's cells mask both faces):")
    print(f"      same face, clean vs sunglasses, no mask      cosine {plain.score:+.4f}")
    print(f"      same face, clean vs sunglasses, cells 10-13  cosine {masked.score:+.4f}")
    print(f"      other face vs sunglasses,       cells 10-13  cosine {different.score:+.4f}")


def _show_latency(recognizer, bundle: Path, architecture, faces: np.ndarray) -> None:
    import torch

    from pdsn.export.parity import pytorch_embeddings
    from pdsn.model.demo_weights import demo_dictionary, demo_model

    model = demo_model(architecture)
    dictionary = demo_dictionary(architecture)
    machine = describe_machine()
    print(f"\n[4/4] latency on {machine['cpu']}, {machine['cores']} cores "
          f"(torch threads {torch.get_num_threads()}):")
    print(f"      {'path':<34} {'batch 1 p50':>12} {'batch 8 img/s':>14} {'speed-up':>9}")
    rows = {
        "PyTorch eager FP32 (reference)": lambda batch, occ: pytorch_embeddings(model, batch, occ, dictionary),
        "pdsn runtime, ONNX Runtime FP32": lambda batch, occ: recognizer.embed(batch, occ),
    }
    baseline = None
    for name, run in rows.items():
        stats = {}
        for size in (1, 8):
            batch, occlusion = faces[:size], np.zeros((size, 25), np.float32)
            stats[size] = measure(lambda: run(batch, occlusion), batch=size, warmup=1, min_iterations=3, min_seconds=2.0)
        baseline = baseline or stats[8].throughput
        print(f"      {name:<34} {stats[1].p50_ms:>9.1f} ms {stats[8].throughput:>14.1f} "
              f"{stats[8].throughput / baseline:>8.2f}x")


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())
