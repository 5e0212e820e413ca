"""``pdsn demo``: the main job on the embedded default model, start to finish, in plain words.

The trained demo model (a small LResNet-IR trained on SYNTHETIC faces, with its dictionary) is
exported and checked against PyTorch; its FP16 and INT8 variants are made and refused if they
miss their gates; the torch-free runtime verifies occluded synthetic faces and measures every
precision's accuracy on synthetic pairs. Speed is measured on the paper's LResNet50E-IR with
seeded weights (speed does not depend on the weights), side by side with PyTorch eager.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import numpy as np

from pdsn.bench.timing_bundle import VARIANT_PRECISIONS, add_variants, existing_bundle, prepare_timing_bundle
from pdsn.errors import PdsnError
from pdsn.train.evaluate import EVAL_PAIRS

# The demo model's INT8 variant, under the default gates. Min-max calibration: on this model it
# meets them as well as entropy (`pdsn quantize`'s default) in a tenth of the time.
DEMO_CALIBRATION = {"calib": "synthetic", "method": "minmax", "samples": 256, "holdout": 64}
DEMO_PRECISIONS = ("fp32", *VARIANT_PRECISIONS)


class DemoStopped(PdsnError, RuntimeError):
    """A check of the demo failed; its output says which."""


def prepare_demo_bundle(out: Path, progress: bool = True) -> tuple[dict, dict]:
    """Export the trained demo model to ``out`` with gated variants; returns (parity, variants).

    Raises ``VariantRejected`` when a variant misses its gate: it is not written.
    """
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    existing = existing_bundle(out, "trained-demo")
    parity = export_bundle(ExportRequest(out=out, overwrite=existing is not None, weights="demo")).parity
    return parity, add_variants(out, DEMO_CALIBRATION, enforce_gate=True, progress=progress)


def run_demo(out: Path, timing_work: Path, timing_architecture: str, eval_pairs: int = EVAL_PAIRS) -> int:
    from pdsn.bench.report import terminal_table
    from pdsn.bench.runner import BenchConfig, run_benchmark
    from pdsn.export.parity import format_parity_table

    print(
        "pdsn-deploy demo: the embedded default model, lresnet-ir-tiny trained end to end on "
        "SYNTHETIC faces by `pdsn train-demo`, with its 25-item mask dictionary\n"
    )
    started = time.perf_counter()
    parity, variants = prepare_demo_bundle(out)
    print(
        f"[1/6] exported {out}/ ({time.perf_counter() - started:.0f} s with variants): model.onnx "
        f"with one ai.pdsn::FdmGatherMul node, dictionary.npy, manifest.json"
    )
    print("      ONNX Runtime vs PyTorch on the same faces (gate: cosine >= 0.99999):")
    print(textwrap.indent(format_parity_table(parity), " " * 6))
    print(
        "\n[2/6] precision variants against the FP32 model on held-out faces (a variant that "
        "missed its gate would have stopped the demo here):"
    )
    for precision, entry in variants.items():
        p = entry["parity"]
        print(
            f"      {precision}: cosine min {p['cosine_min']:.5f}, mean {p['cosine_mean']:.5f}, "
            f"p1 {p['cosine_p1']:.5f}; gate {p['gate']}: met"
        )

    from pdsn.runtime import Recognizer

    with Recognizer.open(out) as recognizer:
        info = recognizer.backend_info
        print(
            f"\n[3/6] runtime: {info['backend']} {info['version']} on {info['device']}, precision "
            f"'auto' chose {recognizer.precision} (the runtime never imports torch)"
        )
        _verify_every_backend(out)
        _show_verification(recognizer)
        _show_identification(recognizer)

    print(
        f"\n[5/6] verification accuracy on {eval_pairs} synthetic pairs of identities the model "
        f"never saw, PyTorch and every runtime precision:"
    )
    print(textwrap.indent(_accuracy_table(out, eval_pairs), " " * 6))

    print(
        f"\n[6/6] throughput and latency of the paper's {timing_architecture} (seeded weights in "
        f"{timing_work}/, reused when present; speed does not depend on the weights), end to end "
        f"from uint8 crops:"
    )
    timing_variants = prepare_timing_bundle(timing_work, timing_architecture, reuse=True)
    result = run_benchmark(timing_work, BenchConfig(batches=(1, 8), seconds=2.0, min_iterations=3), progress=False)
    print(textwrap.indent(terminal_table(result), " " * 6))
    if not timing_variants["int8"].parity.passed:
        p = timing_variants["int8"].parity
        print(
            f"      The INT8 rows time a variant of untrained weights that misses the INT8 gate (cosine "
            f"mean {p.cosine_mean:.4f}, p1 {p.cosine_p1:.4f}); it is kept for timing only."
        )
    print(
        "\nThe demo model knows only synthetic faces: its scores show the method (FDM lifts occluded "
        "accuracy), not accuracy on people. For your own model: `pdsn export --checkpoint CKPT "
        "--dictionary DIR --out B`, `pdsn quantize --bundle B --calib FACES`, `pdsn verify --bundle B`, "
        "`pdsn bench --bundle B`."
    )
    return 0


def _verify_every_backend(bundle: Path) -> None:
    """`pdsn verify`: every variant on every backend installed here, against ONNX Runtime FP32."""
    from pdsn.verify import format_verification, verify_bundle

    result = verify_bundle(bundle)
    print("      `pdsn verify`: every variant on every backend here against ONNX Runtime FP32, 32 held-out faces:")
    print(textwrap.indent(format_verification(result), " " * 6))
    if not result["passed"]:
        raise DemoStopped(f"a variant of {bundle} missed its gate on a backend (table above); the demo stops here")


def _show_verification(recognizer) -> None:
    """Two images of one synthetic identity, the second behind sunglasses, and another identity."""
    from pdsn.model.grid import NUM_CELLS
    from pdsn.train.occlusion import occlude
    from pdsn.train.synthetic import SyntheticFaces

    faces, _ = SyntheticFaces(2, 2, seed=2026).generate()
    occluded = occlude(faces[1], "sunglasses", np.random.default_rng(2026))
    cells = [cell for cell in range(NUM_CELLS) if occluded.cells[cell]]
    plain = recognizer.verify(faces[0], occluded.image)
    masked = recognizer.verify(faces[0], occluded.image, occlusion_b=cells)
    other = recognizer.verify(faces[2], occluded.image, occlusion_b=cells)
    print(f"\n[4/6] verification, PDSN protocol (the occluded face's cells {cells} mask both faces):")
    print(f"      same identity, clean vs sunglasses, no mask    cosine {plain.score:+.4f}")
    print(f"      same identity, clean vs sunglasses, with FDM   cosine {masked.score:+.4f}")
    print(f"      other identity vs sunglasses,       with FDM   cosine {other.score:+.4f}")


def _show_identification(recognizer) -> None:
    """12 identities enrolled clean, each probed behind sunglasses: rank-1 with the estimator's cells
    (occlusion='auto') beside the true cells and no mask, and how often the estimator found the true cells."""
    import tempfile

    from pdsn.runtime.gallery import Gallery
    from pdsn.train.occlusion import occlude
    from pdsn.train.synthetic import SyntheticFaces

    count = 12
    faces, _ = SyntheticFaces(count, 2, seed=2027).generate()
    probes = [occlude(faces[2 * i + 1], "sunglasses", np.random.default_rng([2027, i])) for i in range(count)]
    images = np.stack([p.image for p in probes])
    true_cells = [np.flatnonzero(p.cells).tolist() for p in probes]
    estimated = [np.flatnonzero(row).tolist() for row in recognizer.estimate_occlusion(images)]
    with (
        tempfile.TemporaryDirectory(prefix="pdsn-demo-") as folder,
        Gallery.open(Path(folder) / "gallery.db", recognizer) as gallery,
    ):
        for identity in range(count):
            gallery.enroll(f"person-{identity:02d}", faces[2 * identity])
        print(f"      identification, {count} identities enrolled clean, each probed behind sunglasses:")
        for label, occlusion in (("true cells", true_cells), ("occlusion='auto'", "auto"), ("no mask", None)):
            results = gallery.identify_many(images, occlusion=occlusion, k=1)
            right = sum(r.matches[0].identity == f"person-{i:02d}" for i, r in enumerate(results))
            print(f"      {label:<17} rank-1 {right:>2} of {count}")
    found = sum(e == t for e, t in zip(estimated, true_cells))
    print(
        f"      the estimator found exactly the true cells for {found} of {count} probes "
        f"(person-00: estimated {estimated[0]}, true {true_cells[0]})"
    )


def _accuracy_table(bundle: Path, num_pairs: int) -> str:
    from pdsn.model.checkpoint import load_recognition_model
    from pdsn.model.demo_weights import TRAINED_DEMO_CHECKPOINT, TRAINED_DEMO_DICTIONARY
    from pdsn.model.dictionary import load_dictionary
    from pdsn.train.evaluate import (
        BundleEmbedder,
        TorchEmbedder,
        evaluation_report,
        format_table,
        occlude_seconds,
        synthetic_pairs,
    )

    model, _ = load_recognition_model(TRAINED_DEMO_CHECKPOINT)
    dictionary = load_dictionary(TRAINED_DEMO_DICTIONARY, model.architecture.feature_shape)
    pairs = synthetic_pairs(num_pairs)
    embedders = [TorchEmbedder(model, dictionary, "pytorch fp32")]
    try:
        for precision in DEMO_PRECISIONS:
            embedders.append(BundleEmbedder.open(bundle, "auto", precision))
        report = evaluation_report(embedders, pairs, occlude_seconds(pairs))
    finally:
        for embedder in embedders:
            if isinstance(embedder, BundleEmbedder):
                embedder.close()
    return format_table(report)
