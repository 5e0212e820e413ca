"""Adding an FP16 or INT8 variant to a bundle: make it, gate it, then record it, or change nothing.

Everything is built in the staging folder of a ``BundleWrite`` (which holds the bundle's write
lock, so concurrent runs take turns and each lands in the manifest). Only a variant that passed
its gate is placed in the bundle, under a name no listed file has, and the manifest switch comes
last; a failure or a kill at any step leaves the bundle's manifest and every file it lists byte
for byte as they were. The variant it replaces is removed after the switch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdsn.calib.data import SYNTHETIC, load_face_sets, read_crop
from pdsn.calib.gates import DEFAULT_GATES, PrecisionGate, format_variant_table, pairs_accuracy_change, variant_parity
from pdsn.errors import PdsnError
from pdsn.export.trunk_split import TRUNK_FILES, write_trunk
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.comparison import onnx_embedder
from pdsn.model.folded_head import FoldedHead
from pdsn.model.manifest import bundle_file, verify_files
from pdsn.model.protocols import read_lfw_pairs

VARIANT_FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
QUANTIZERS = ("onnxruntime", "modelopt")


class VariantRejected(PdsnError, RuntimeError):
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
    with BundleWrite(bundle, f"pdsn quantize --precision {request.precision}") as write:
        manifest = write.existing
        verify_files(bundle, manifest)
        fp32 = manifest.variants.get("fp32")
        if fp32 is None:
            raise ValueError(
                f"bundle {bundle} has no FP32 model (variants: {sorted(manifest.variants)}); "
                f"variants are made from it, so export the bundle again with `pdsn export`"
            )
        fp32_path = bundle_file(bundle, manifest, fp32.file, "variants.fp32.file")
        contract = manifest.contract
        dictionary = np.load(bundle_file(bundle, manifest, manifest.dictionary_file, "dictionary.file"))
        samples = request.samples if request.precision == "int8" else 0
        calibration, holdout = load_face_sets(
            request.calib or SYNTHETIC,
            samples,
            request.holdout,
            request.seed,
            request.progress,
            (contract.height, contract.width),
        )
        pairs = read_lfw_pairs(request.pairs, request.pairs_root) if request.pairs and request.pairs_root else None
        staged = write.staging / VARIANT_FILES[request.precision]
        made, cache = _make(request, manifest, fp32_path, staged, calibration, dictionary, contract, write.staging)
        reference = onnx_embedder(fp32_path, dictionary, contract)
        candidate = onnx_embedder(staged, dictionary, contract)
        gate = request.gates[request.precision]
        report = variant_parity(reference, candidate, holdout, gate)
        if pairs is not None:
            report["pairs"] = pairs_accuracy_change(
                reference, candidate, pairs, lambda path: read_crop(path, (contract.height, contract.width))
            )
        report_name = f"reports/parity-{request.precision}.json"
        (write.staging / "reports").mkdir(exist_ok=True)
        (write.staging / report_name).write_text(json.dumps(report, indent=2) + "\n")
        if not report["passed"] and request.enforce_gate:
            raise VariantRejected(
                f"the {request.precision} variant missed its gate ({'; '.join(report['failures'])}) "
                f"on {len(holdout)} held-out faces; bundle {bundle} is unchanged.\n"
                + format_variant_table({f"{request.precision} vs fp32": report})
            )
        trunk_entry = _trunk(
            bundle, manifest, request.precision, staged, candidate, dictionary, contract, holdout, write.staging
        )
        variant_file = write.place(staged, VARIANT_FILES[request.precision])
        report_file = write.place(write.staging / report_name, report_name)
        cache_file = write.place(write.staging / cache, cache) if cache else None
        entry = {
            "file": variant_file,
            "precision": request.precision,
            **made,
            "calibration": calibration.describe() | {"cache": cache_file} if calibration is not None else None,
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
        if trunk_entry is not None:
            trunk_name = TRUNK_FILES[request.precision]
            entry["trunk"] = {"file": write.place(write.staging / trunk_name, trunk_name), "parity": trunk_entry}
        if pairs is not None:
            entry["pairs"] = report["pairs"]
        document = manifest.document()
        document["variants"][request.precision] = entry
        write.commit(document)
    return entry


def _trunk(bundle, manifest, precision, variant, full, dictionary, contract, holdout, staging) -> dict | None:
    """The variant's trunk, checked with the bundle's folded head against the variant itself.

    None for a bundle without a folded head (exported by an older pdsn-deploy): it serves no gallery.
    """
    if manifest.head_file is None:
        return None
    head = FoldedHead.load(bundle_file(bundle, manifest, manifest.head_file, "head.file"))
    trunk = staging / TRUNK_FILES[precision]
    return write_trunk(variant, precision, trunk, head, full, dictionary, contract, holdout.images)


def _make(request, manifest, fp32_path, out_path, calibration, dictionary, contract, staging):
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

    fp32_hash = manifest.sha256_of(manifest.variants["fp32"].file)
    cache = f"calibration/int8-{request.method}-{calibration.fingerprint[:16]}-{fp32_hash[:12]}.json"
    staged_cache = staging / cache
    staged_cache.parent.mkdir(parents=True, exist_ok=True)
    if cache in manifest.files:
        shutil.copy2(bundle_file(request.bundle, manifest, cache, manifest.entry_of(cache)), staged_cache)
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
