"""`--quantizer modelopt`: ModelOpt quantizes the trunk, which is spliced back into the full model.

ModelOpt pins onnxruntime-gpu and onnx versions of its own, so it is not in the test environment
of `scripts/test.sh`; these tests skip there and run in an environment made as the README says.
Without ModelOpt, the one test here checks the install hint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from pdsn.calib.variants import VariantRequest, add_variant
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP
from pdsn.model.manifest import read_manifest
from pdsn.runtime import Recognizer
from pdsn.train.synthetic import SyntheticFaces

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


@pytest.mark.skipif(HAS_MODELOPT, reason="checks the message where ModelOpt is missing")
def test_without_modelopt_the_error_says_how_to_install_it(tiny_bundle):
    from pdsn.calib.modelopt_int8 import ModelOptUnavailableError

    with pytest.raises(ModelOptUnavailableError, match=r"pip install 'nvidia-modelopt\[onnx\]'.*--no-deps"):
        add_variant(
            VariantRequest(
                tiny_bundle, "int8", calib="synthetic", quantizer="modelopt", samples=8, holdout=4, progress=False
            )
        )


@pytest.mark.skipif(not HAS_MODELOPT, reason="needs NVIDIA ModelOpt (a separate environment, see the README)")
def test_modelopt_int8_of_the_demo_model_meets_the_default_gate(tmp_path):
    bundle = export_bundle(ExportRequest(out=tmp_path / "bundle", parity_faces=2, weights="demo")).bundle
    entry = add_variant(
        VariantRequest(
            bundle,
            "int8",
            calib="synthetic",
            method="entropy",
            quantizer="modelopt",
            samples=128,
            holdout=64,
            progress=False,
        )
    )
    assert entry["quantizer"] == "modelopt" and entry["weight_bits"] == 8 and entry["calibration"]["cache"] is None
    assert entry["parity"]["passed"] and entry["parity"]["cosine_p1"] >= 0.98

    model = onnx.load(str(bundle / "model.int8.onnx"))
    nodes = list(model.graph.node)
    assert [n.op_type for n in nodes if n.domain == FDM_DOMAIN] == [FDM_OP], "the FDM op stays one node"
    assert [f.name for f in model.functions] == [FDM_OP]
    producers = {o: n for n in nodes for o in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    quantized = [n for n in convs if n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
    # ModelOpt's own placement rules leave some narrow convolutions in FP32 (here layer 1's).
    assert convs and len(quantized) >= 0.75 * len(convs), f"{len(quantized)} of {len(convs)} conv weights are Q/DQ"
    assert len(quantized) <= entry["quantized_nodes"] <= entry["offered_nodes"], "the manifest counts what ModelOpt did"
    protected = [n for n in nodes if n.op_type in (FDM_OP, "Gemm")]
    assert all(
        producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for n in protected for i in n.input
    )

    faces, _ = SyntheticFaces(2, 2, seed=5).generate()
    with Recognizer.open(bundle, precision="int8") as int8, Recognizer.open(bundle, precision="fp32") as fp32:
        a, b = int8.embed(faces, occlusion=[10, 11, 12, 13]), fp32.embed(faces, occlusion=[10, 11, 12, 13])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98
    assert read_manifest(bundle).document()["variants"]["int8"]["quantizer_version"]
    assert Path(bundle / "model.int8.onnx").stat().st_size < Path(bundle / "model.onnx").stat().st_size
