"""``pdsn verify``: a bundle's integrity, then every variant against FP32 on every installed backend.

The FP32 ONNX model on ONNX Runtime is the reference (its own parity against PyTorch was checked
at export). Each variant is compared on held-out faces under the same gates ``pdsn quantize``
applied, so the table shows whether what ships still agrees wherever it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from pdsn.calib.data import SYNTHETIC, load_face_sets
from pdsn.calib.gates import DEFAULT_GATES, PrecisionGate, format_variant_table, variant_parity
from pdsn.runtime import Recognizer
from pdsn.runtime.backends import BACKENDS, ENGINE_BACKENDS, BackendUnavailableError
from pdsn.runtime.bundle import open_bundle

FP32_GATE = PrecisionGate(min_cosine=0.99999)


def verify_bundle(bundle: Path, holdout_source: str = SYNTHETIC, holdout: int = 32, seed: int = 0) -> dict:
    """Returns {"rows": {label: parity report}, "skipped": {backend: reason}, "passed": bool}."""
    loaded = open_bundle(bundle)
    _, faces = load_face_sets(holdout_source, 0, holdout, seed, progress=False)
    with Recognizer.open(bundle, backend="onnxruntime", precision="fp32") as reference:
        rows, skipped = {}, {}
        for backend in BACKENDS:
            engines = {e["precision"]: e for e in loaded.manifest.get("engines", {}).values() if e["flavour"] == backend}
            if backend in ENGINE_BACKENDS and not engines:
                skipped[backend] = f"no {backend} engine in the bundle (`pdsn build --flavour {backend}` makes one)"
                continue
            for precision in sorted(engines) if backend in ENGINE_BACKENDS else loaded.precisions:
                options = {"device": "cuda", "max_batch": engines[precision]["profile"]["max"]} if engines else {}
                try:
                    candidate = Recognizer.open(bundle, backend=backend, precision=precision, allow_ungated=True,
                                                **options)
                except BackendUnavailableError as exc:
                    skipped[backend] = str(exc)
                    break
                with candidate:
                    gate = DEFAULT_GATES.get(precision, FP32_GATE)
                    rows[f"{precision} on {backend}"] = variant_parity(reference.embed, candidate.embed, faces, gate)
    return {"rows": rows, "skipped": skipped, "passed": all(r["passed"] for r in rows.values())}


def format_verification(result: dict) -> str:
    """The parity table of every variant on every backend, then the backends not checked and why."""
    skipped = [f"  {backend}: not checked ({reason})" for backend, reason in result["skipped"].items()]
    return "\n".join([format_variant_table(result["rows"]), *skipped])


def print_and_save(result: dict, report: Path | None) -> None:
    print(format_verification(result))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {report}")
