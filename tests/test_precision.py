"""FP16 and INT8 variants: graph structure, runtimes, gates, cache reuse, and all-or-nothing writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from factories import quick_variant

from pdsn.calib.gates import PrecisionGate
from pdsn.calib.graph_regions import kept_fp32_nodes, trunk_nodes
from pdsn.calib.variants import VariantRejected, VariantRequest, add_variant
from pdsn.model.bundle_format import FDM_OP
from pdsn.model.manifest import read_manifest
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import Recognizer


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _snapshot(bundle: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def test_graph_regions_keep_pre_and_post_processing_out(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    kept = {n.name: n.op_type for n in model.graph.node if n.name in set(kept_fp32_nodes(model))}
    assert sorted(kept.values()) == sorted(["Transpose", "Cast", "Div", "Sub", "Div", FDM_OP, "Reshape", "Gemm"])
    trunk_ops = {n.op_type for n in model.graph.node if n.name in set(trunk_nodes(model))}
    assert trunk_ops == {"Conv", "PRelu", "BatchNormalization", "Add"}


def test_fp16_variant_types(quantized):
    model = onnx.load(str(quantized / "model.fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {
        "image": onnx.TensorProto.UINT8,
        "occlusion": onnx.TensorProto.FLOAT,
        "fdm_dictionary": onnx.TensorProto.FLOAT,
    }
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    initializers = {i.name: i.data_type for i in model.graph.initializer}
    assert initializers["head.weight"] == initializers["head.bias"] == onnx.TensorProto.FLOAT
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert {initializers[w] for w in conv_weights} == {onnx.TensorProto.FLOAT16}
    fdm = next(n for n in model.graph.node if n.op_type == FDM_OP)
    producer = {o: n for n in model.graph.node for o in n.output}[fdm.input[0]]
    assert producer.op_type == "Cast" and producer.attribute[0].i == onnx.TensorProto.FLOAT
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 3, "uint8->fp32 input, fp32->fp16 into the trunk, fp16->fp32 out of it"


def test_int8_variant_is_tensorrt_style_qdq(quantized):
    model = onnx.load(str(quantized / "model.int8.onnx"))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = list(model.graph.node)
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    q = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert q and dq
    for node in q + dq:
        if len(node.input) > 2:
            assert not initializers[node.input[2]].any(), f"{node.name}: zero point must be 0"
    for node in dq:
        data = initializers.get(node.input[0])
        assert data is None or data.dtype == np.int8, f"{node.name}: DequantizeLinear of {data.dtype}"
    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    conv_weight_dq = [
        n for n in dq if any(c.op_type == "Conv" and c.input[1] == n.output[0] for c in consumers.get(n.output[0], []))
    ]
    assert conv_weight_dq, "conv weights are quantized"
    for node in conv_weight_dq:
        scale = initializers[node.input[1]]
        assert scale.ndim == 1 and scale.size > 1, "per-channel weight scales"
    assert max(np.abs(initializers[n.input[0]].astype(int)).max() for n in conv_weight_dq) <= 64, (
        "7-bit weights by default"
    )
    protected = [n for n in nodes if n.op_type in (FDM_OP, "Gemm")]
    producers = {o: n for n in nodes for o in n.output}
    for node in protected:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input), (
            f"{node.op_type} must stay out of INT8"
        )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variants_run_on_cpu_backends(quantized, backend, precision):
    if backend == "openvino":
        pytest.importorskip("openvino")
    faces = seeded_faces(3, seed=1)
    with Recognizer.open(quantized, backend=backend, precision=precision) as rec:
        assert rec.precision == precision
        out = rec.embed(faces, occlusion=[10, 11, 12, 13])
    assert out.shape == (3, 512) and np.isfinite(out).all()


def test_manifest_records_variants_with_their_figures(quantized):
    manifest = read_manifest(quantized).document()
    int8 = manifest["variants"]["int8"]
    assert int8["file"] == "model.int8.onnx" and int8["method"] == "minmax" and int8["weight_bits"] == 7
    assert int8["calibration"]["synthetic"] and int8["calibration"]["samples"] == 32
    assert int8["parity"]["against"] == "fp32-onnx" and int8["parity"]["holdout"]["samples"] == 16
    assert int8["calibration"]["cache"] in manifest["files"]
    assert {"model.fp16.onnx", "model.int8.onnx", "reports/parity-int8.json", "reports/parity-fp16.json"} <= set(
        manifest["files"]
    )
    assert manifest["variants"]["fp16"]["parity"]["cosine_min"] >= 0.9995


def test_auto_precision_prefers_int8_on_cpu_and_says_so(quantized, tiny_bundle):
    with Recognizer.open(quantized) as rec:
        assert rec.precision == "int8" and rec.backend_info["precision"] == "int8"
    with Recognizer.open(tiny_bundle) as rec:
        assert rec.precision == "fp32"
    with pytest.raises(ValueError, match="precision 'int8' is not in bundle"):
        Recognizer.open(tiny_bundle, precision="int8")


def test_calibration_cache_is_reused_for_the_same_data_only(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    request = quick_variant(bundle)
    first = add_variant(request)
    again = add_variant(request)
    other = add_variant(quick_variant(bundle, seed=5))
    assert not first["cache_reused"] and again["cache_reused"] and not other["cache_reused"]
    assert first["calibration"]["cache"] == again["calibration"]["cache"] != other["calibration"]["cache"]


def test_eight_bit_weights_use_the_full_range(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    entry = add_variant(quick_variant(bundle, weight_bits=8))
    model = onnx.load(str(bundle / "model.int8.onnx"))
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer]
    assert entry["weight_bits"] == 8
    assert max(np.abs(w.astype(int)).max() for w in weights if w.dtype == np.int8) == 127


def test_failed_gate_leaves_the_bundle_exactly_as_it_was(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    before = _snapshot(bundle)
    impossible = {"int8": PrecisionGate(min_cosine=1.01)}
    with pytest.raises(VariantRejected, match="missed its gate .*cosine min") as error:
        add_variant(quick_variant(bundle, gates=impossible))
    assert "is unchanged" in str(error.value) and "int8 vs fp32" in str(error.value)
    assert _snapshot(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "staging left behind"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"precision": "int8"}, ValueError, "--calib is required for int8"),
        ({"precision": "int4"}, ValueError, "--precision 'int4'"),
        ({"precision": "int8", "calib": "synthetic", "method": "kl"}, ValueError, "--method 'kl'"),
        ({"precision": "int8", "calib": "synthetic", "weight_bits": 6}, ValueError, "--weight-bits 6"),
        ({"precision": "int8", "calib": "synthetic", "quantizer": "tensorrt"}, ValueError, "--quantizer 'tensorrt'"),
        ({"precision": "fp16", "quantizer": "modelopt"}, ValueError, "modelopt makes int8 variants"),
        (
            {"precision": "int8", "calib": "synthetic", "quantizer": "modelopt", "weight_bits": 7},
            ValueError,
            "modelopt quantizes weights to 8 bits",
        ),
        (
            {"precision": "int8", "calib": "synthetic", "quantizer": "modelopt", "method": "percentile"},
            ValueError,
            "not available with --quantizer modelopt",
        ),
        ({"precision": "fp16", "pairs": Path("p.txt")}, ValueError, "--pairs and --pairs-root go together"),
    ],
)
def test_bad_requests_change_nothing(tiny_bundle, tmp_path, kwargs, error, message):
    bundle = _copy(tiny_bundle, tmp_path)
    before = _snapshot(bundle)
    with pytest.raises(error, match=message):
        add_variant(VariantRequest(bundle, samples=8, holdout=4, progress=False, **kwargs))
    assert _snapshot(bundle) == before


def test_bundle_without_fp32_model(tiny_bundle, tmp_path):
    import json

    bundle = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["variants"]["fp32"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has no FP32 model"):
        add_variant(VariantRequest(bundle, "fp16", progress=False))


def test_pairs_report_the_accuracy_change(tiny_bundle, tmp_path):
    from PIL import Image

    root = tmp_path / "pairs"
    faces = seeded_faces(40, seed=3)
    for i, face in enumerate(faces):
        (root / f"p{i // 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(root / f"p{i // 2}" / f"p{i // 2}_{i % 2 + 1:04d}.jpg", quality=95)
    lines = ["10\t1"]
    for k in range(20):
        lines.append(f"p{k}\t1\t2" if k % 2 == 0 else f"p{k}\t1\tp{k - 1}\t2")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    bundle = _copy(tiny_bundle, tmp_path)
    entry = add_variant(
        VariantRequest(bundle, "fp16", pairs=tmp_path / "pairs.txt", pairs_root=root, holdout=8, progress=False)
    )
    assert entry["pairs"]["pairs"] == 20
    assert abs(entry["pairs"]["accuracy_change"]) <= 0.1


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_with_a_short_last_batch(tiny_bundle, tmp_path, method):
    """20 faces are batches of 16 and 4: ONNX Runtime's histogram collector cannot stack those."""
    from pdsn.calib.data import load_face_sets
    from pdsn.calib.int8 import make_int8
    from pdsn.model.bundle_format import ModelContract

    contract = ModelContract.from_dict(read_manifest(tiny_bundle).document()["contract"])
    faces, _ = load_face_sets("synthetic", 20, 1, progress=False)
    made = make_int8(
        tiny_bundle / "model.onnx",
        tmp_path / "m.onnx",
        faces,
        np.load(tiny_bundle / "dictionary.npy"),
        contract,
        method,
        tmp_path / "cache.json",
        progress=False,
    )
    assert made["method"] == method and (tmp_path / "cache.json").is_file()
