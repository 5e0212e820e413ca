"""The timing bundle: seeded weights of an architecture with their variants, for `pdsn bench`.

Speed does not depend on the weights, so the benchmark measures the paper's LResNet50E-IR with
seeded weights, prepared once in a work folder and reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pdsn.model.manifest import Manifest, Variant, read_manifest

VARIANT_PRECISIONS = ("fp16", "int8")
# The timing bundle's calibration is quick: its INT8 variant times the engine, and seeded
# LResNet50E-IR weights miss the INT8 gate anyway (measured: cosine p1 0.95 with 7-bit weights).
TIMING_CALIBRATION = {"calib": "synthetic", "method": "minmax", "samples": 64, "holdout": 32}


def prepare_timing_bundle(
    out: Path, architecture_name: str, reuse: bool, progress: bool = True
) -> Mapping[str, Variant]:
    """Export seeded weights of ``architecture_name`` with their variants; returns the variants.

    Seeded weights are untrained, so a variant that misses its gate is still written, marked as
    failed: the runtime refuses it for serving, and the benchmark measures it as a timing proxy.
    """
    from pdsn.export.bundle_writer import ExportRequest, export_bundle
    from pdsn.model.network import architecture_by_name

    architecture = architecture_by_name(architecture_name)
    existing = existing_bundle(out, "seeded")
    # A bundle from before the trunk/head split cannot serve galleries: remade, not reused.
    if (
        reuse
        and existing is not None
        and existing.model.name == architecture.name
        and existing.head_file
        and all(v.trunk_file for v in existing.variants.values())
        and set(VARIANT_PRECISIONS) <= set(existing.variants)
    ):
        return existing.variants
    export_bundle(ExportRequest(out=out, architecture=architecture, weights="seeded", overwrite=existing is not None))
    add_variants(out, TIMING_CALIBRATION, enforce_gate=False, progress=progress)
    return read_manifest(out).variants


def existing_bundle(out: Path, weights: str) -> Manifest | None:
    """The manifest of the bundle of ``weights`` at ``out``; refuses to replace anything else."""
    existing = read_manifest(out) if (out / "manifest.json").is_file() else None
    if out.is_dir() and any(out.iterdir()) and (existing is None or existing.model.weights != weights):
        kinds = {"trained-demo": "the demo bundle", "dlib-face-resnet-v1": "the demo bundle of dlib's model"}
        kind = kinds.get(weights, "a timing bundle of seeded weights")
        raise FileExistsError(f"{out} holds something other than {kind}; choose another directory")
    return existing


def add_variants(out: Path, calibration: dict, enforce_gate: bool, progress: bool) -> dict:
    from pdsn.calib.variants import VariantRequest, add_variant

    return {
        precision: add_variant(
            VariantRequest(out, precision, enforce_gate=enforce_gate, progress=progress, **calibration)
        )
        for precision in VARIANT_PRECISIONS
    }
