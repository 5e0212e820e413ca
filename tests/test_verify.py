"""`pdsn verify` judges FP32 against PyTorch's recorded embeddings and every variant against FP32."""

from __future__ import annotations

import shutil

import numpy as np
from factories import randomized_model

from pdsn.cli import main
from pdsn.export.bundle_writer import REFERENCE_EMBEDDINGS
from pdsn.model.comparison import load_reference, save_reference
from pdsn.model.manifest import read_manifest, write_manifest
from pdsn.verify import verify_bundle


def _rehash(bundle) -> None:
    """Rewrite the manifest's hashes, as a consistent (not a careless) change would."""
    write_manifest(bundle, read_manifest(bundle).document())


def test_fp32_row_is_judged_against_pytorch_not_itself(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    result = verify_bundle(bundle, holdout=4)
    row = result["rows"]["fp32 on onnxruntime"]
    assert row["passed"] and row["compared"].startswith("pytorch-fp32")
    assert 0 < row["overall"]["max_abs_error"] < 1e-3 * row["overall"]["reference_max_abs"]

    faces, references = load_reference(bundle / REFERENCE_EMBEDDINGS)
    cells, embeddings = references["sunglasses"]
    references["sunglasses"] = (cells, embeddings[::-1].copy())  # another face's embedding per row
    save_reference(bundle / REFERENCE_EMBEDDINGS, faces, references)
    _rehash(bundle)
    result = verify_bundle(bundle, holdout=4)
    row = result["rows"]["fp32 on onnxruntime"]
    assert not row["passed"] and not result["passed"]
    assert [f.split(":")[0] for f in row["failures"]] == ["sunglasses"]


def test_a_variant_that_disagrees_with_fp32_fails_verify(tiny_bundle, tmp_path, capsys):
    from pdsn.export.onnx_export import ExportOptions, export_onnx

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert main(["quantize", "--bundle", str(bundle), "--precision", "fp16", "--holdout", "8"]) == 0
    other = randomized_model(seed=11)
    dictionary = np.load(bundle / "dictionary.npy")
    export_onnx(other, dictionary, bundle / "model.fp16.onnx", ExportOptions())
    _rehash(bundle)
    assert main(["verify", "--bundle", str(bundle), "--faces", "8"]) == 1
    printed = capsys.readouterr().out
    assert "fp16 on onnxruntime" in printed and "FAIL" in printed
