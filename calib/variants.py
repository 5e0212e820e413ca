"""Adding an FP16 or INT8 variant to a bundle: make it, gate it, then record it, or change nothing.

Everything is built in a staging directory beside the bundle. Only a variant that passed its gate
is moved in, and the manifest is rewritten last, atomically; a failure at any step leaves the
bundle byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdsn.calib.data import SYNTHETIC, load_face_sets, read_crop
from pdsn.calib.gates import DEFAULT_GATES, PrecisionGate, format_variant_table, pairs_accuracy_change, variant_parity
from pdsn.model.bundle_format import ModelContract, read_manifest, verify_files, write_manifest
from pdsn.model.comparison import onnx_embedder
from pdsn.model.protocols import read_lfw_pairs

VARIANT_FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
QUANTIZERS = ("onnxruntime", "modelopt")


class VariantRejected(RuntimeError):
    """The variant missed its parity gate; the bundle was left unchanged."""


@dataclass(frozen=True)
class VariantRequest:
    bundle: Path
    precision: str
    calib: str | Path | None = None
    method: str = "entropy"
    quantizer: str = "onnxruntime"
    weight_bits: int | None = None  # None: 7 with onnxruntime (calib.int8), 8 with modelopt
    samples: int = 512
    holdout: int = 64
    seed: int = 0
    gates: dict[str, PrecisionGate] = field(default_factory=lambda: dict(DEFAULT_GATES))
    pairs: Path | None = None
    pairs_root: Path | None = None
    progress: bool = True
    # False only for timing bundles of untrained weights: the gate is still measured and the
    # variant is recorded as failed, and the runtime refuses it unless told it is for timing.
    enforce_gate: bool = True


def add_variant(request: VariantRequest) -> dict:
    """Make, gate and record one variant; returns its manifest entry."""
    bundle = Path(request.bundle)
    if request.precision not in VARIANT_FILES:
        raise ValueError(f"--precision {request.precision!r} is not one of {sorted(VARIANT_FILES)}")
    if request.precision == "int8" and request.calib is None:
        raise ValueError(
            "--calib is required for int8: a folder or list file of aligned 112x96 face crops, or "
            "'synthetic' for the project's synthetic faces"
        )
    if request.quantizer not in QUANTIZERS:
        raise ValueError(f"--quantizer {request.quantizer!r} is not one of {QUANTIZERS}")
    if request.quantizer == "modelopt" and request.precision != "int8":
        raise ValueError(
            f"--quantizer modelopt makes int8 variants; {request.precision} is made by onnxruntime's converter"
        )
    if request.quantizer == "modelopt" and request.weight_bits not in (None, 8):
        raise ValueError(f"--quantizer modelopt quantizes weights to 8 bits, got --weight-bits {request.weight_bits}")
    if (request.pairs is None) != (request.pairs_root is None):
        raise ValueError("--pairs and --pairs-root go together (the pairs file and its image folder)")
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    fp32 = manifest.get("variants", {}).get("fp32")
    if fp32 is None:
        raise ValueError(
            f"bundle {bundle} has no FP32 model (variants: {sorted(manifest.get('variants', {}))}); "
            f"variants are made from it, so export the bundle again with `pdsn export`"
        )
    contract = ModelContract.from_dict(manifest["contract"])
    dictionary = np.load(bundle / manifest["dictionary"]["file"], allow_pickle=False)
    samples = request.samples if request.precision == "int8" else 0
    calibration, holdout = load_face_sets(
        request.calib or SYNTHETIC, samples, request.holdout, request.seed, request.progress
    )
    pairs = read_lfw_pairs(request.pairs, request.pairs_root) if request.pairs else None

    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.{request.precision}-", dir=bundle.parent))
    try:
        variant_file = VARIANT_FILES[request.precision]
        made, cache = _make(
            request,
            bundle / fp32["file"],
            manifest["files"][fp32["file"]]["sha256"],
            staging / variant_file,
            calibration,
            dictionary,
            contract,
            staging,
        )
        reference = onnx_embedder(bundle / fp32["file"], dictionary, contract)
        candidate = onnx_embedder(staging / variant_file, dictionary, contract)
        gate = request.gates[request.precision]
        report = variant_parity(reference, candidate, holdout, gate)
        if pairs is not None:
            report["pairs"] = pairs_accuracy_change(reference, candidate, pairs, read_crop)
        report_file = f"reports/parity-{request.precision}.json"
        (staging / "reports").mkdir(exist_ok=True)
        (staging / report_file).write_text(json.dumps(report, indent=2) + "\n")
        if not report["passed"] and request.enforce_gate:
            raise VariantRejected(
                f"the {request.precision} variant missed its gate ({'; '.join(report['failures'])}) "
                f"on {len(holdout)} held-out faces; bundle {bundle} is unchanged.\n"
                + format_variant_table({f"{request.precision} vs fp32": report})
            )
        entry = {
            "file": variant_file,
            "precision": request.precision,
            **made,
            "calibration": calibration.describe() | {"cache": cache} if calibration is not None else None,
            "parity": {
                "report": report_file,
                "against": "fp32-onnx",
                "holdout": report["holdout"],
                "gate": report["gate"],
                "cosine_min": report["overall"]["cosine_min"],
                "cosine_mean": report["overall"]["cosine_mean"],
                "cosine_p1": report["overall"]["cosine_p1"],
                "max_abs_error": report["overall"]["max_abs_error"],
                "passed": report["passed"],
                "failures": report["failures"],
            },
        }
        if pairs is not None:
            entry["pairs"] = report["pairs"]
        new_files = [variant_file, report_file] + ([cache] if cache else [])
        for relative in new_files:
            (bundle / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, bundle / relative)
        manifest["variants"][request.precision] = entry
        manifest["files"] = sorted(set(manifest["files"]) | set(new_files))
        write_manifest(bundle, manifest)
        return entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make(request, fp32_path, fp32_hash, out_path, calibration, dictionary, contract, staging):
    """Build the variant file; returns (manifest fields, calibration cache path or None).

    The INT8 calibration cache is named by method, calibration data and FP32 model, so it is
    reused exactly when the same data calibrates the same model again.
    """
    if request.precision == "fp16":
        from pdsn.calib.fp16 import make_fp16

        make_fp16(fp32_path, out_path)
        return {"converter": "onnxruntime.transformers.float16"}, None
    if request.quantizer == "modelopt":
        from pdsn.calib.modelopt_int8 import make_int8_modelopt

        return make_int8_modelopt(fp32_path, out_path, calibration, dictionary, contract, request.method), None
    from pdsn.calib.int8 import make_int8

    cache = f"calibration/int8-{request.method}-{calibration.fingerprint[:16]}-{fp32_hash[:12]}.json"
    staged_cache = staging / cache
    staged_cache.parent.mkdir(parents=True, exist_ok=True)
    if (request.bundle / cache).is_file():
        shutil.copy2(request.bundle / cache, staged_cache)
    made = make_int8(
        fp32_path,
        out_path,
        calibration,
        dictionary,
        contract,
        request.method,
        staged_cache,
        request.progress,
        7 if request.weight_bits is None else request.weight_bits,
    )
    return made, cache
