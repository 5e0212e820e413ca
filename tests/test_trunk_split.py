"""The model split at the FDM op: trunk features through the folded head equal the full model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from pdsn.export.trunk_split import folded_head, trunk_model
from pdsn.model.bundle_format import FEATURES_OUTPUT, ModelContract
from pdsn.model.comparison import PARITY_PATTERNS, onnx_embedder, onnx_session, split_parity
from pdsn.model.folded_head import FoldedHead
from pdsn.model.manifest import read_manifest
from pdsn.model.sample_faces import seeded_faces


def _split(bundle, precision, tmp_path):
    manifest = read_manifest(bundle).document()
    contract = ModelContract.from_dict(manifest["contract"])
    dictionary = np.load(bundle / "dictionary.npy")
    variant = bundle / manifest["variants"][precision]["file"]
    trunk_path = tmp_path / f"trunk.{precision}.onnx"
    onnx.save(trunk_model(onnx.load(str(variant))), str(trunk_path))
    head = folded_head(onnx.load(str(bundle / "model.onnx")))
    session = onnx_session(trunk_path)
    return contract, dictionary, onnx_embedder(variant, dictionary, contract), session, head


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trunk_and_head_reproduce_every_variant(quantized, precision, tmp_path):
    contract, dictionary, full, session, head = _split(quantized, precision, tmp_path)
    assert [o.name for o in session.get_outputs()] == [FEATURES_OUTPUT]
    assert [i.name for i in session.get_inputs()] == ["image"]
    faces = seeded_faces(6, seed=21)
    report = split_parity(full, lambda x: session.run(None, {"image": x})[0], head, dictionary, faces, contract)
    assert report["passed"], report["failures"]
    assert set(report["patterns"]) == set(PARITY_PATTERNS)


def test_split_parity_fails_for_a_wrong_head(tiny_bundle, tmp_path):
    contract, dictionary, full, session, head = _split(tiny_bundle, "fp32", tmp_path)
    wrong = FoldedHead(head.weight[::-1].copy(), head.bias)
    report = split_parity(
        full, lambda x: session.run(None, {"image": x})[0], wrong, dictionary, seeded_faces(4, seed=3), contract
    )
    assert not report["passed"] and report["failures"]


def test_masked_head_uses_kept_or_discarded_columns_alike():
    rng = np.random.default_rng(0)
    head = FoldedHead(rng.normal(size=(16, 40)).astype(np.float32), rng.normal(size=16).astype(np.float32))
    features = rng.normal(size=(5, 40)).astype(np.float16)
    for discarded in (np.arange(0), np.arange(5), np.arange(30), np.arange(40)):
        keep = np.ones(40, np.float32)
        keep[discarded] = 0
        expected = (features.astype(np.float64) * keep) @ head.weight.T.astype(np.float64) + head.bias
        np.testing.assert_allclose(head.masked(features, discarded, base=None), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(head.embed(features, keep), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="40"):
        head.embed(np.zeros((2, 41), np.float32))


def test_folded_head_round_trips(tmp_path):
    head = FoldedHead(np.ones((3, 4), np.float32), np.zeros(3, np.float32))
    head.save(tmp_path / "head.npz")
    again = FoldedHead.load(tmp_path / "head.npz")
    np.testing.assert_array_equal(again.weight, head.weight)
    np.savez(tmp_path / "other.npz", weight=head.weight)
    with pytest.raises(ValueError, match="not a pdsn-folded-head"):
        FoldedHead.load(tmp_path / "other.npz")
