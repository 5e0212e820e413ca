"""``pdsn verify``: a bundle's integrity, then every variant on every installed backend.

FP32 on each backend is judged against PyTorch's own embeddings of the parity faces, recorded in
the bundle at export (so no torch is needed here), under the export gate. Each precision variant
is compared with the FP32 model on ONNX Runtime on held-out faces, under the gate ``pdsn
quantize`` applied (recorded with the variant), so the table shows whether what ships still agrees wherever it runs. The
output ends with the manifest's SHA-256, to pin (``expected_digest``), and names what interrupted
writes left in the bundle (the next writer removes it; verify only reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pdsn.calib.data import SYNTHETIC, load_face_sets
from pdsn.calib.gates import DEFAULT_GATES, PrecisionGate, format_variant_table, variant_parity
from pdsn.model.bundle_format import DETECTOR_NETS, leftovers
from pdsn.model.bundle_write import writer_active
from pdsn.model.comparison import ExportGate, judge_against_reference, load_reference
from pdsn.model.detector_contract import IMAGE_INPUT, NET_INPUT_SIZES, NET_OUTPUTS
from pdsn.model.estimator_parity import judge_estimator, parity_faces
from pdsn.model.manifest import Variant
from pdsn.runtime import Recognizer
from pdsn.runtime.backends import BACKENDS, ENGINE_BACKENDS, BackendUnavailableError
from pdsn.runtime.bundle import Bundle, open_bundle
from pdsn.runtime.detection.nets import DETECTOR_BACKENDS, open_nets
from pdsn.runtime.occlusion_estimator import ESTIMATOR_BACKENDS, OcclusionEstimator

# The nets' outputs are probabilities and box offsets of order 1; backends differ by float rounding only.
DETECTOR_MAX_ABS_ERROR = 1e-3


def verify_bundle(
    bundle: Path, holdout_source: str = SYNTHETIC, holdout: int = 32, seed: int = 0, expected_digest: str | None = None
) -> dict:
    """Returns {"rows": {label: parity report}, "estimator": {label: parity report}, "skipped": {backend: reason}, "passed": bool,
    "manifest_sha256": str, "leftovers": [names], "writer_active": bool}; ``expected_digest`` pins the
    manifest's SHA-256."""
    loaded = open_bundle(bundle, expected_digest=expected_digest)
    reference_file = loaded.manifest.variants["fp32"].parity.reference_embeddings
    what = "variants.fp32.parity.reference_embeddings"
    pytorch = load_reference(loaded.file(reference_file, what)) if reference_file else None
    size = (loaded.contract.height, loaded.contract.width)
    _, faces = load_face_sets(holdout_source, 0, holdout, seed, progress=False, size=size)
    rows, skipped = {}, {}
    if pytorch is None:
        skipped["fp32"] = (
            "the bundle records no PyTorch reference embeddings (exported by an older pdsn-deploy); "
            "re-export it to check FP32 against PyTorch"
        )
    pinned = {"expected_digest": loaded.digest}  # every open reads the manifest checked here
    with Recognizer.open(bundle, backend="onnxruntime", precision="fp32", **pinned) as reference:
        for backend in BACKENDS:
            engines = {e.precision: e for e in loaded.manifest.engines_of(backend)}
            if backend in ENGINE_BACKENDS and not engines:
                skipped[backend] = f"no {backend} engine in the bundle (`pdsn build --flavour {backend}` makes one)"
                continue
            for precision in sorted(engines) if backend in ENGINE_BACKENDS else loaded.precisions:
                options = {"device": "cuda", "max_batch": engines[precision].profile.max} if engines else {}
                try:
                    candidate = Recognizer.open(
                        bundle, backend=backend, precision=precision, allow_ungated=True, **options, **pinned
                    )
                except BackendUnavailableError as exc:
                    skipped[backend] = str(exc)
                    break
                with candidate:
                    label = f"{precision} on {backend}"
                    if precision != "fp32":
                        gate = _recorded_gate(loaded.manifest.variants[precision])
                        rows[label] = variant_parity(reference.embed, candidate.embed, faces, gate)
                    elif pytorch is not None:
                        faces_seen, references = pytorch
                        rows[label] = judge_against_reference(
                            references, candidate.embed, faces_seen, ExportGate(), "pytorch-fp32 (recorded at export)"
                        )
    estimator = _verify_estimator(loaded, skipped)
    detector = _verify_detector(loaded, skipped)
    return {
        "rows": rows,
        "estimator": estimator,
        "detector": detector,
        "skipped": skipped,
        "passed": all(r["passed"] for r in [*rows.values(), *estimator.values(), *detector.values()]),
        "manifest_sha256": loaded.digest,
        "leftovers": leftovers(bundle),
        "writer_active": writer_active(bundle),
    }


def _verify_estimator(loaded: Bundle, skipped: dict) -> dict:
    """The occlusion estimator on each CPU backend against PyTorch's probabilities recorded at export."""
    entry = loaded.manifest.estimator
    if entry is None:
        return {}
    if entry.parity_report is None:
        skipped["estimator"] = "it records no parity report; `pdsn add-estimator` again to check it on every backend"
        return {}
    parity = json.loads(loaded.file(entry.parity_report, "estimator.parity.report").read_text(encoding="utf-8"))
    reference = parity.get("reference")
    if not reference:
        skipped["estimator"] = (
            "its parity report records no PyTorch probabilities (added by an older pdsn-deploy); "
            "`pdsn add-estimator` again to check it on every backend"
        )
        return {}
    size = tuple(reference["faces"].get("size", (loaded.contract.height, loaded.contract.width)))
    faces = parity_faces(reference["faces"]["count"], reference["faces"]["seed"], size)
    thresholds = np.asarray(entry.thresholds, dtype=np.float32)
    rows = {}
    for backend in ESTIMATOR_BACKENDS:
        try:
            estimator = OcclusionEstimator(loaded, backend)
        except (BackendUnavailableError, ImportError) as exc:
            skipped[f"estimator on {backend}"] = str(exc)
            continue
        compared = f"occlusion estimator on {backend} vs PyTorch eager FP32 (recorded at export)"
        rows[f"estimator on {backend}"] = judge_estimator(
            reference["pytorch_probabilities"], estimator.probabilities(faces), thresholds, compared
        )
    return rows


def _verify_detector(loaded: Bundle, skipped: dict) -> dict:
    """The face detector's three nets on each CPU backend against ONNX Runtime's outputs recorded when it was placed."""
    entry = loaded.manifest.detector
    if entry is None:
        skipped["detector"] = "the bundle has no face detector (`pdsn add-detector` adds one)"
        return {}
    files = {net: loaded.file(entry.files[net], f"detector.files.{net}") for net in DETECTOR_NETS}
    with np.load(loaded.file(entry.reference, "detector.reference"), allow_pickle=False) as saved:
        recorded = {key: saved[key] for key in saved.files}
    rows = {}
    for backend in DETECTOR_BACKENDS:
        try:
            nets, _ = open_nets(files, NET_OUTPUTS, NET_INPUT_SIZES, backend, "cpu", None)
        except (BackendUnavailableError, ImportError) as exc:
            skipped[f"detector on {backend}"] = str(exc)
            continue
        errors, cosines = [], []
        for net, run in nets.items():
            outputs = run(recorded[f"{net}/{IMAGE_INPUT}"])
            for name, got in zip(NET_OUTPUTS[net], outputs):
                expected = recorded[f"{net}/{name}"].astype(np.float64).ravel()
                got = np.asarray(got, dtype=np.float64).ravel()
                errors.append(float(np.max(np.abs(got - expected))))
                cosines.append(float(got @ expected / max(np.linalg.norm(got) * np.linalg.norm(expected), 1e-12)))
        failures = (
            []
            if max(errors) <= DETECTOR_MAX_ABS_ERROR
            else [f"max |error| {max(errors):.2e} > {DETECTOR_MAX_ABS_ERROR:g}"]
        )
        rows[f"detector on {backend}"] = {
            "max_abs_error": max(errors),
            "cosine_min": min(cosines),
            "compared": f"P-, R- and O-Net on {backend} vs ONNX Runtime FP32 (recorded when placed)",
            "passed": not failures,
            "failures": failures,
        }
    return rows


def _recorded_gate(variant: Variant) -> PrecisionGate:
    """The gate the variant was made under (``pdsn quantize --min-cosine`` etc.), else the default."""
    recorded = variant.parity.gate
    return PrecisionGate(**recorded) if recorded else DEFAULT_GATES[variant.precision]


def format_verification(result: dict) -> str:
    """The parity table of every variant on every backend, what was not checked and why, then the
    manifest's digest and any leftovers of interrupted writes."""
    lines = [format_variant_table(result["rows"])]
    for label, report in result.get("estimator", {}).items():
        verdict = "pass" if report["passed"] else "FAIL: " + "; ".join(report["failures"])
        lines.append(
            f"{label:<28} max |probability error| {report['max_abs_error']:.2e}, cells agree "
            f"{report['cell_agreement']:.4f}  {verdict}"
        )
    for label, report in result.get("detector", {}).items():
        verdict = "pass" if report["passed"] else "FAIL: " + "; ".join(report["failures"])
        lines.append(
            f"{label:<28} max |error| {report['max_abs_error']:.2e}, cosine min {report['cosine_min']:.6f}  {verdict}"
        )
    lines += [f"  {what}: not checked ({reason})" for what, reason in result["skipped"].items()]
    lines.append(f"manifest SHA-256 {result['manifest_sha256']} (pin it: expected_digest=...)")
    if result["leftovers"]:
        state = (
            "a writer holds the bundle's lock now, so these may be its work in progress"
            if result["writer_active"]
            else "the next `pdsn export --overwrite`, `quantize` or `build` of this bundle removes them"
        )
        lines.append(f"warning: interrupted writes left {', '.join(result['leftovers'])} in the bundle; {state}")
    return "\n".join(lines)


def print_and_save(result: dict, report: Path | None) -> None:
    print(format_verification(result))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {report}")
