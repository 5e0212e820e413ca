"""The INT8 gate on a genuinely trained network: the default gates pass, on every CPU backend.

Random weights quantize badly, so this exports the trained demo model (the package default) and
calibrates from a folder of aligned crops of its synthetic domain, identities it never saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pdsn.calib.variants import VariantRequest, add_variant
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.train.synthetic import SyntheticFaces
from pdsn.verify import verify_bundle


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("trained")
    assert (
        export_bundle(ExportRequest(out=work / "bundle", weights="demo")).manifest.document()["model"]["weights"]
        == "trained-demo"
    )
    faces = work / "faces"
    images, labels = SyntheticFaces(40, 6, seed=7).generate()
    for i, (image, label) in enumerate(zip(images, labels)):
        (faces / f"id{label:03d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(faces / f"id{label:03d}" / f"{i:04d}.png")
    return work / "bundle", faces


def test_int8_meets_the_default_gate_on_a_trained_model(trained_bundle):
    bundle, faces = trained_bundle
    entry = add_variant(
        VariantRequest(bundle, "int8", calib=faces, method="entropy", samples=160, holdout=64, progress=False)
    )
    parity = entry["parity"]
    print(
        f"int8 vs fp32 on 64 held-out faces: cosine min {parity['cosine_min']:.5f}, "
        f"mean {parity['cosine_mean']:.5f}, p1 {parity['cosine_p1']:.5f}"
    )
    assert parity["passed"] and parity["gate"] == {"mean_cosine": 0.99, "p1_cosine": 0.98}
    assert parity["cosine_mean"] >= 0.99 and parity["cosine_p1"] >= 0.98
    assert entry["calibration"]["synthetic"] is False and entry["calibration"]["samples"] == 160


def test_verify_passes_every_variant_on_every_backend(trained_bundle):
    bundle, faces = trained_bundle
    add_variant(VariantRequest(bundle, "fp16", calib=faces, holdout=64, progress=False))
    result = verify_bundle(bundle, str(faces), holdout=48)
    assert result["passed"], result["rows"]
    backends = {label.split(" on ")[1] for label in result["rows"]}
    assert "onnxruntime" in backends
    pytest.importorskip("openvino")
    assert "openvino" in backends
