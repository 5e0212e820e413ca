"""The fused FDM plugin: its ahead-of-time implementation, the ONNX rewrite that feeds it, the build.

``tensorrt.plugin`` exists only in data-centre TensorRT (10.9+), which needs a GPU to build; the
glue runs here against a stand-in that records what the decorators receive.
"""

from __future__ import annotations

import re
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fake_tensorrt import install_fake_tensorrt
from onnx.utils import Extractor

from pdsn.engines.build import EngineBuildRequest, build_engine
from pdsn.engines.fdm_plugin_graph import OCCLUSION_WORDS, PACKED_DICTIONARY_INPUT, plugin_model
from pdsn.kernels.fdm_pack import pack_dictionary, pack_occlusion, packed_words
from pdsn.kernels.fdm_plugin import PLUGIN_ID, PLUGIN_NAME, PLUGIN_NAMESPACE, register_fdm_plugin
from pdsn.model.bundle_format import FDM_OP
from pdsn.model.manifest import read_manifest
from pdsn.runtime.bundle import open_bundle


def _desc(shape, dtype):
    desc = types.SimpleNamespace(shape_expr=list(shape), dtype=dtype)
    desc.like = lambda: types.SimpleNamespace(shape_expr=list(shape), dtype=dtype)
    return desc


@pytest.fixture
def trtp(monkeypatch):
    return install_fake_tensorrt(monkeypatch).plugin


@pytest.fixture
def nvrtc():
    pytest.importorskip("cuda.bindings.nvrtc")


@pytest.mark.parametrize(("dtype", "kernel"), [("float32", "fdm_gather_mul_f32"), ("float16", "fdm_gather_mul_f16")])
def test_aot_implementation_returns_the_kernels_ptx_and_launch(trtp, nvrtc, dtype, kernel):
    register_fdm_plugin()
    implement = trtp.aot[PLUGIN_ID]
    features, occlusion, dictionary = _desc((256, 512, 7, 6), dtype), _desc((256,), "int32"), _desc((25, 672), "int32")
    name, ptx, launch, scalars = implement(features, occlusion, dictionary, (features.like(),))
    assert name == kernel
    text = ptx.decode()
    assert ".target sm_75" in text and f".entry {kernel}(" in text
    parameters = re.findall(rf"\.param \.(\w+) {kernel}_param_\d+", text)
    assert parameters == ["u64"] * 3 + ["u32"] * 4 + ["u64"], "3 inputs, 4 scalars, then the output"
    assert (launch.grid_x, launch.block_x) == (256 * 21504 // 256, 256)
    assert scalars == (256, 21504, 672, 25), "batch, elements, words per row, cells"


def test_descriptor_keeps_the_feature_shape_and_wants_int32_packing(trtp):
    register_fdm_plugin()
    describe = trtp.registered[PLUGIN_ID]
    out = describe(_desc((8, 512, 7, 6), "float16"), _desc((8,), "int32"), _desc((25, 672), "int32"))
    assert (out.shape_expr, out.dtype) == ([8, 512, 7, 6], "float16")
    with pytest.raises(ValueError, match="must be int32"):
        describe(_desc((8, 512, 7, 6), "float32"), _desc((8, 25), "float32"), _desc((25, 672), "int32"))


def test_registration_happens_once_per_tensorrt(trtp):
    register_fdm_plugin()
    register_fdm_plugin()
    assert list(trtp.registered) == [PLUGIN_ID]


def test_no_plugin_module_says_what_is_needed(monkeypatch):
    install_fake_tensorrt(monkeypatch, plugin=False)
    with pytest.raises(RuntimeError, match="needs data-centre TensorRT 10.9 or later"):
        register_fdm_plugin()


def test_rewrite_feeds_the_plugin_packed_inputs(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    rewritten = plugin_model(model)
    assert any(n.op_type == FDM_OP for n in model.graph.node), "the original is left unchanged"
    (node,) = [n for n in rewritten.graph.node if n.op_type == PLUGIN_NAME]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {"plugin_namespace": PLUGIN_NAMESPACE.encode(), "plugin_version": b"1"}
    assert list(node.input)[1:] == [OCCLUSION_WORDS, PACKED_DICTIONARY_INPUT]
    assert not any(n.op_type == FDM_OP for n in rewritten.graph.node) and not rewritten.functions
    dictionary = np.load(tiny_bundle / "dictionary.npy")
    packed = next(i for i in rewritten.graph.input if i.name == PACKED_DICTIONARY_INPUT)
    dims = [d.dim_value for d in packed.type.tensor_type.shape.dim]
    assert dims == [25, packed_words(dictionary[0].size)]
    assert packed.type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_occlusion_words_computed_in_the_graph_match_the_packer(tiny_bundle, tmp_path):
    rewritten = plugin_model(onnx.load(str(tiny_bundle / "model.onnx")))
    words_only = Extractor(rewritten).extract_model(["occlusion"], [OCCLUSION_WORDS])
    onnx.save(words_only, str(tmp_path / "words.onnx"))
    occlusion = (np.random.default_rng(0).random((6, 25)) < 0.3).astype(np.float32)
    occlusion[0], occlusion[1] = 0, 1
    (words,) = ort.InferenceSession(str(tmp_path / "words.onnx")).run(None, {"occlusion": occlusion})
    np.testing.assert_array_equal(words.view(np.uint32), pack_occlusion(occlusion))


def test_an_embedded_dictionary_is_packed_in_place(tiny_float_bundle):
    rewritten = plugin_model(onnx.load(str(tiny_float_bundle / "model.onnx")))
    packed = next(i for i in rewritten.graph.initializer if i.name == PACKED_DICTIONARY_INPUT)
    expected = pack_dictionary(np.load(tiny_float_bundle / "dictionary.npy")).view(np.int32)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(packed), expected)
    assert PACKED_DICTIONARY_INPUT not in {i.name for i in rewritten.graph.input}


def test_a_model_without_the_fdm_node_is_refused(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    rewritten = plugin_model(model)
    with pytest.raises(ValueError, match="expected one ai.pdsn::FdmGatherMul node .* found 0"):
        plugin_model(rewritten)


def test_rtx_parser_looks_the_plugin_up_by_name_and_namespace(tiny_bundle, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    onnx.save(plugin_model(onnx.load(str(tiny_bundle / "model.onnx"))), str(tmp_path / "plugin.onnx"))
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(tmp_path / "plugin.onnx"))
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    assert any("Plugin not found" in e.desc() and e.node_operator() == PLUGIN_NAME for e in errors)


def test_datacentre_plugin_build_records_the_packed_dictionary_input(trtp, nvrtc, quantized, tmp_path):
    bundle = Path(shutil.copytree(quantized, tmp_path / "bundle"))
    entry = build_engine(EngineBuildRequest(bundle, "fp16", flavour="tensorrt", fdm_impl="plugin", progress=None))
    assert entry["file"] == "engines/tensorrt-10.13.0.35-sm90-fp16-b1-16-128-fdm-plugin.engine"
    assert entry["fdm_impl"] == "plugin" and PLUGIN_ID in trtp.aot
    words = packed_words(np.load(bundle / "dictionary.npy")[0].size)
    assert entry["inputs"][PACKED_DICTIONARY_INPUT] == [25, words]
    assert "fdm_dictionary" not in entry["inputs"]
    assert read_manifest(bundle).document()["engines"][Path(entry["file"]).stem]["fdm_impl"] == "plugin"
    open_bundle(bundle, verify=True)
