"""The Turing rewrite: the FDM count and the head's GEMM in FP16, the rest of the model untouched."""

from __future__ import annotations

import numpy as np
import onnx

from pdsn.engines.turing_graph import turing_model
from pdsn.model.bundle_format import FDM_OP, ModelContract
from pdsn.model.comparison import onnx_session, run_onnx
from pdsn.model.manifest import read_manifest
from pdsn.model.sample_faces import occlusion_mix, seeded_faces


def test_the_rewrite_runs_both_gemms_in_fp16_and_stays_close(tiny_bundle, tmp_path):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    rewritten = turing_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    body = {n.output[0]: n for n in rewritten.functions[0].node}
    count = next(n for n in rewritten.functions[0].node if n.op_type == "MatMul")
    assert all(
        body[name].op_type == "Cast" and body[name].attribute[0].i == onnx.TensorProto.FLOAT16 for name in count.input
    ), "the FDM count multiplies FP16 operands"
    gemms = [n for n in rewritten.graph.node if n.op_type == "Gemm"]
    initializers = {i.name: i for i in rewritten.graph.initializer}
    assert gemms and all(
        initializers[name].data_type == onnx.TensorProto.FLOAT16 for g in gemms for name in g.input[1:]
    )
    assert not any(i.name in ("head.weight", "head.bias") for i in rewritten.graph.initializer), "FP32 copies pruned"
    assert [n.op_type for n in rewritten.graph.node if n.domain] == [FDM_OP]
    assert sum(n.op_type == "Conv" for n in rewritten.graph.node) == sum(n.op_type == "Conv" for n in model.graph.node)

    onnx.save(rewritten, str(tmp_path / "turing.onnx"))
    manifest = read_manifest(tiny_bundle).document()
    contract, dictionary = ModelContract.from_dict(manifest["contract"]), np.load(tiny_bundle / "dictionary.npy")
    faces, occlusion = seeded_faces(6, seed=4), occlusion_mix(6, seed=4)
    expected = run_onnx(onnx_session(str(tiny_bundle / "model.onnx")), faces, occlusion, dictionary, contract)
    got = run_onnx(onnx_session(str(tmp_path / "turing.onnx")), faces, occlusion, dictionary, contract)
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.9999
