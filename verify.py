"""``pdsn verify``: a bundle's integrity, then every variant on every installed backend.

FP32 on each backend is judged against PyTorch's own embeddings of the parity faces, recorded in
the bundle at export (so no torch is needed here), under the export gate. Each precision variant
is compared with the FP32 model on ONNX Runtime on held-out faces, under the gate ``pdsn
quantize`` applied, so the table shows whether what ships still agrees wherever it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from pdsn.calib.data import SYNTHETIC, load_face_sets
from pdsn.calib.gates import DEFAULT_GATES, format_variant_table, variant_parity
from pdsn.model.comparison import ExportGate, judge_against_reference, load_reference
from pdsn.runtime import Recognizer
from pdsn.runtime.backends import BACKENDS, ENGINE_BACKENDS, BackendUnavailableError
from pdsn.runtime.bundle import open_bundle


def verify_bundle(bundle: Path, holdout_source: str = SYNTHETIC, holdout: int = 32, seed: int = 0) -> dict:
    """Returns {"rows": {label: parity report}, "skipped": {backend: reason}, "passed": bool}."""
    loaded = open_bundle(bundle)
    reference_file = loaded.manifest["variants"]["fp32"].get("parity", {}).get("reference_embeddings")
    pytorch = load_reference(bundle / reference_file) if reference_file else None
    _, faces = load_face_sets(holdout_source, 0, holdout, seed, progress=False)
    rows, skipped = {}, {}
    if pytorch is None:
        skipped["fp32"] = (
            "the bundle records no PyTorch reference embeddings (exported by an older pdsn-deploy); "
            "re-export it to check FP32 against PyTorch"
        )
    with Recognizer.open(bundle, backend="onnxruntime", precision="fp32") as reference:
        for backend in BACKENDS:
            engines = {e["precision"]: e for e in loaded.manifest.get("engines", {}).values() if e["flavour"] == backend}
            if backend in ENGINE_BACKENDS and not engines:
                skipped[backend] = f"no {backend} engine in the bundle (`pdsn build --flavour {backend}` makes one)"
                continue
            for precision in sorted(engines) if backend in ENGINE_BACKENDS else loaded.precisions:
                options = {"device": "cuda", "max_batch": engines[precision]["profile"]["max"]} if engines else {}
                try:
                    candidate = Recognizer.open(
                        bundle, backend=backend, precision=precision, allow_ungated=True, **options
                    )
                except BackendUnavailableError as exc:
                    skipped[backend] = str(exc)
                    break
                with candidate:
                    label = f"{precision} on {backend}"
                    if precision != "fp32":
                        rows[label] = variant_parity(reference.embed, candidate.embed, faces, DEFAULT_GATES[precision])
                    elif pytorch is not None:
                        faces_seen, references = pytorch
                        rows[label] = judge_against_reference(
                            references, candidate.embed, faces_seen, ExportGate(), "pytorch-fp32 (recorded at export)"
                        )
    return {"rows": rows, "skipped": skipped, "passed": all(r["passed"] for r in rows.values())}


def format_verification(result: dict) -> str:
    """The parity table of every variant on every backend, then what was not checked and why."""
    skipped = [f"  {what}: not checked ({reason})" for what, reason in result["skipped"].items()]
    return "\n".join([format_variant_table(result["rows"]), *skipped])


def print_and_save(result: dict, report: Path | None) -> None:
    print(format_verification(result))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {report}")

