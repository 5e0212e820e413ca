"""The embedded default: the full LResNet50E-IR demo model exports, passes parity and runs."""

from __future__ import annotations

import numpy as np
import pytest

from pdsn.cli import main
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import Recognizer


@pytest.mark.slow
def test_default_lresnet50e_ir_bundle(tmp_path):
    result = export_bundle(ExportRequest(out=tmp_path / "default"))
    manifest = result.manifest
    assert manifest["model"]["architecture"]["name"] == "lresnet50e-ir"
    assert manifest["model"]["weights"] == "demo" and "DEMO WEIGHTS" in manifest["model"]["label"]
    assert manifest["contract"]["feature_shape"] == [512, 7, 6]
    assert result.parity["passed"]
    with Recognizer.open(result.bundle) as recognizer:
        out = recognizer.embed(seeded_faces(2), occlusion=[20, 21, 22, 23, 24])
    assert out.shape == (2, 512) and np.isfinite(out).all()


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--architecture", "lresnet10e-ir"]) == 0
    printed = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "pytorch-eager-fp32", "onnxruntime-fp32",
                 "onnxruntime-int8", "fp16: cosine min", "int8: cosine min"):
        assert step in printed
    assert "FAIL" not in printed
    assert main(["demo", "--out", str(out), "--architecture", "lresnet10e-ir"]) == 0, "rerun must replace"


def test_demo_refuses_to_replace_a_non_demo_bundle(tiny_bundle, capsys):
    assert main(["demo", "--out", str(tiny_bundle)]) == 2
    assert "something other than the demo bundle" in capsys.readouterr().err
