"""Export: graph structure per the contract, PyTorch parity, bundle contents, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from factories import TINY, random_binary_dictionary, randomized_model

from pdsn.export import parity as parity_module
from pdsn.export.bundle_writer import REFERENCE_EMBEDDINGS, ExportRequest, export_bundle
from pdsn.export.onnx_export import ExportOptions
from pdsn.export.parity import ParityError, pytorch_embeddings
from pdsn.model.bundle_format import FDM_DOMAIN, FDM_OP, ModelContract, sha256_file
from pdsn.model.checkpoint import load_recognition_model
from pdsn.model.comparison import PARITY_PATTERNS, ExportGate, compare_embeddings, onnx_feeds
from pdsn.model.dictionary import MaskDictionary
from pdsn.model.manifest import read_manifest
from pdsn.model.network import fold_head
from pdsn.model.sample_faces import seeded_faces


def _graph(bundle: Path) -> onnx.ModelProto:
    return onnx.load(str(bundle / "model.onnx"))


def test_graph_follows_the_contract(tiny_bundle):
    model = _graph(tiny_bundle)
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["image", "occlusion", "fdm_dictionary"]
    assert inputs["image"].elem_type == onnx.TensorProto.UINT8
    dims = lambda t: [d.dim_param or d.dim_value for d in t.shape.dim]  # noqa: E731
    assert dims(inputs["image"])[1:] == [112, 96, 3] and isinstance(dims(inputs["image"])[0], str)
    assert dims(inputs["occlusion"]) == [dims(inputs["image"])[0], 25]
    assert dims(inputs["fdm_dictionary"]) == [25, *TINY.feature_shape]
    assert [o.name for o in model.graph.output] == ["embedding"]
    fused = [n for n in model.graph.node if n.op_type == FDM_OP]
    assert len(fused) == 1 and fused[0].domain == FDM_DOMAIN
    assert [f.name for f in model.functions] == [FDM_OP]
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17
    after = [n.op_type for n in model.graph.node][[n.op_type for n in model.graph.node].index(FDM_OP) :]
    assert "BatchNormalization" not in after, f"head not folded: {after}"


def test_every_option_flipped(tiny_float_bundle):
    model = _graph(tiny_float_bundle)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["image", "occlusion"]
    assert inputs["image"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inputs["image"].shape.dim][1:] == [3, 112, 96]
    assert "fdm_dictionary" in {i.name for i in model.graph.initializer}
    manifest = read_manifest(tiny_float_bundle).document()
    contract = ModelContract.from_dict(manifest["contract"])
    assert contract.dictionary_binding == "embedded" and contract.l2_normalized


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_float_bundle"])
@pytest.mark.parametrize("batch", [1, 5])
def test_parity_with_pytorch_on_every_pattern(request, fixture, batch, tiny_checkpoint, tiny_dictionary_file):
    bundle = request.getfixturevalue(fixture)
    contract = ModelContract.from_dict(read_manifest(bundle).document()["contract"])
    model, _ = load_recognition_model(tiny_checkpoint)
    masks = np.load(tiny_dictionary_file)
    dictionary = MaskDictionary(masks, None, None, "test")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    faces = seeded_faces(batch, seed=42)
    for cells in PARITY_PATTERNS.values():
        occlusion = parity_module.occlusion_batch(cells, batch)
        reference = pytorch_embeddings(model, faces, occlusion, dictionary)
        if contract.l2_normalized:
            reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        (out,) = session.run(None, onnx_feeds(faces, occlusion, masks, contract))
        metrics = compare_embeddings(reference, out)
        assert metrics["cosine_min"] >= 0.99999
        assert metrics["max_abs_error"] <= 1e-3 * metrics["reference_max_abs"]


def test_mixed_occlusion_in_one_batch(tiny_bundle, tiny_checkpoint, tiny_dictionary_file):
    model, _ = load_recognition_model(tiny_checkpoint)
    masks = np.load(tiny_dictionary_file)
    occlusion = np.stack([parity_module.occlusion_batch(c, 1)[0] for c in PARITY_PATTERNS.values()])
    faces = seeded_faces(len(occlusion), seed=3)
    reference = pytorch_embeddings(model, faces, occlusion, MaskDictionary(masks, None, None, "t"))
    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, onnx_feeds(faces, occlusion, masks, ModelContract(feature_shape=TINY.feature_shape)))
    assert compare_embeddings(reference, out)["cosine_min"] >= 0.99999


def test_fold_head_is_exact():
    fc = randomized_model().fc.eval()
    x = torch.randn(4, fc[0].num_features, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fold_head(fc)(x), fc(x), rtol=1e-5, atol=1e-5)


def test_manifest_records_contract_dictionary_hashes_and_provenance(tiny_bundle, tiny_checkpoint):
    manifest = read_manifest(tiny_bundle).document()
    assert set(manifest["files"]) == {
        "model.onnx",
        "dictionary.npy",
        "reports/parity.json",
        REFERENCE_EMBEDDINGS,
        "head.npz",
        "trunk.onnx",
        "detector/pnet.onnx",
        "detector/rnet.onnx",
        "detector/onet.onnx",
        "detector/LICENSE",
        "detector/conversion.json",
        "reports/detector-reference.npz",
    }
    assert manifest["detector"]["files"] == {net: f"detector/{net}.onnx" for net in ("pnet", "rnet", "onet")}
    assert manifest["detector"]["contract"]["defaults"]["thresholds"] == [0.6, 0.7, 0.7]
    assert manifest["head"]["file"] == "head.npz" and manifest["variants"]["fp32"]["trunk"]["parity"]["passed"]
    for relative, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tiny_bundle / relative)
    assert manifest["model"]["weights"] == "checkpoint"
    assert manifest["model"]["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    assert manifest["dictionary"]["tau"] is None  # already binary: kept as given
    assert manifest["contract"]["feature_shape"] == list(TINY.feature_shape)
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(manifest["provenance"]["tools"])
    report = json.loads((tiny_bundle / "reports/parity.json").read_text())
    assert report["passed"] and set(report["patterns"]) == set(PARITY_PATTERNS)


def test_failed_parity_writes_nothing_and_keeps_the_old_bundle(tmp_path, tiny_checkpoint, tiny_dictionary_file):
    out = tmp_path / "bundle"
    request = ExportRequest(out=out, checkpoint=tiny_checkpoint, dictionary=tiny_dictionary_file)
    export_bundle(request)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    impossible = ExportRequest(
        out=out,
        checkpoint=tiny_checkpoint,
        dictionary=tiny_dictionary_file,
        overwrite=True,
        gate=ExportGate(min_cosine=1.5),
    )
    with pytest.raises(ParityError, match="no bundle was written") as error:
        export_bundle(impossible)
    assert "sunglasses" in str(error.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"], "staging directory left behind"


def test_existing_bundle_is_not_replaced_without_overwrite(tmp_path, tiny_checkpoint, tiny_dictionary_file):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_bundle(ExportRequest(out=out, checkpoint=tiny_checkpoint, dictionary=tiny_dictionary_file))
    assert (out / "keep.txt").read_text() == "mine"


def test_dictionary_of_the_wrong_shape_is_refused(tmp_path, tiny_checkpoint):
    wrong = tmp_path / "d.npy"
    np.save(wrong, random_binary_dictionary((64, 7, 6)))
    with pytest.raises(ValueError, match="dictionary"):
        export_bundle(ExportRequest(out=tmp_path / "b", checkpoint=tiny_checkpoint, dictionary=wrong))
    assert not (tmp_path / "b").exists()


def test_low_opset_is_refused():
    with pytest.raises(ValueError, match="opset must be >= 17"):
        ExportOptions(opset=16)


def test_reference_format_inputs_export_and_match_pytorch(tmp_path):
    """A DataParallel stage-1 checkpoint (with sia.* keys) and 25 mean_mask.txt files, as the reference code writes them."""
    from pdsn.model.dictionary import synthetic_mean_masks, write_mean_mask_txt
    from pdsn.model.network import PDSNNetwork

    source = randomized_model(seed=5)
    stage1 = PDSNNetwork(TINY)
    stage1.load_state_dict({**stage1.state_dict(), **source.state_dict()})
    checkpoint = tmp_path / "pdsn_cell12.pth"
    torch.save(
        {
            "epoch": 9,
            "optim_state_dict": {},
            "model_state_dict": {f"module.{k}": v for k, v in stage1.state_dict().items()},
        },
        checkpoint,
    )
    masks_dir = tmp_path / "masks"
    for cell, mask in enumerate(synthetic_mean_masks(3, TINY.feature_shape), start=1):
        (masks_dir / f"cell{cell}").mkdir(parents=True)
        write_mean_mask_txt(masks_dir / f"cell{cell}" / "mean_mask.txt", mask)

    result = export_bundle(ExportRequest(out=tmp_path / "b", checkpoint=checkpoint, dictionary=masks_dir, tau=0.3))
    assert result.parity["passed"]
    manifest = result.manifest.document()
    assert manifest["dictionary"]["tau"] == 0.3
    assert manifest["model"]["checkpoint"]["data_parallel_prefix"] is True
    assert manifest["model"]["checkpoint"]["ignored_keys"] >= 4
    saved = np.load(tmp_path / "b" / "dictionary.npy")
    n = int(np.prod(TINY.feature_shape))
    assert (saved.reshape(25, -1) == 0).sum(axis=1).tolist() == [round(0.3 * n)] * 25
    faces = seeded_faces(3, seed=8)
    occlusion = parity_module.occlusion_batch((10, 11, 12, 13), 3)
    reference = pytorch_embeddings(source, faces, occlusion, MaskDictionary(saved, 0.3, None, "t"))
    session = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, onnx_feeds(faces, occlusion, saved, ModelContract(feature_shape=TINY.feature_shape)))
    assert compare_embeddings(reference, out)["cosine_min"] >= 0.99999
