"""The manifest binds every file it uses: paths, structure and contract are checked before anything loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from pdsn.cli import main
from pdsn.model.bundle_format import (
    MANIFEST_NAME,
    BundleFormatError,
    BundleIntegrityError,
    ModelContract,
    manifest_digest,
    sha256_file,
)
from pdsn.model.manifest import read_manifest, write_manifest
from pdsn.runtime import Recognizer, open_bundle
from pdsn.runtime.model_io import TensorSpec, check_model_io
from pdsn.verify import format_verification, verify_bundle


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _edit(bundle: Path, change) -> None:
    """Rewrite manifest.json with ``change`` applied, keeping its hashes (a hand edit)."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    change(manifest)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def _list(manifest: dict, relative: str, like: str = "model.onnx") -> None:
    """List ``relative`` with the hash of ``like``: an edit that makes the manifest self-consistent."""
    manifest["files"][relative] = manifest["files"][like]


def _point_fp32(path: str, listed: bool):
    def change(manifest):
        manifest["variants"]["fp32"]["file"] = path
        if listed:
            _list(manifest, path)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_point_fp32("/etc/passwd", listed=False), r"variants\.fp32\.file is '/etc/passwd': the path is absolute"),
        (_point_fp32("/etc/passwd", listed=True), r"files\['/etc/passwd'\]: the path is absolute"),
        (_point_fp32("../outside.onnx", listed=False), r"variants\.fp32\.file is '\.\./outside\.onnx'.*'\.\.'"),
        (_point_fp32("../outside.onnx", listed=True), r"files\['\.\./outside\.onnx'\]: .*'\.\.' component"),
        (_point_fp32("reports\\..\\model.onnx", listed=False), r"variants\.fp32\.file .*backslash"),
        (_point_fp32("C:/model.onnx", listed=False), r"variants\.fp32\.file .*drive letter"),
        (_point_fp32("copy.onnx", listed=False), r"variants\.fp32\.file is 'copy\.onnx', which files does not list"),
        (_point_fp32(".pdsn-write.lock", listed=True), r"files\['\.pdsn-write\.lock'\]: .*a writer's own file"),
        (
            lambda m: m["variants"]["fp32"]["parity"].update(reference_embeddings="/tmp/x.npz"),
            r"variants\.fp32\.parity\.reference_embeddings is '/tmp/x\.npz': the path is absolute",
        ),
        (lambda m: m.update(files={}), r"files is empty"),
        (lambda m: m.pop("files"), r"files is missing"),
        (lambda m: m.update(files=["model.onnx"]), r"files is list \['model\.onnx'\], expected an object"),
        (lambda m: m["files"]["model.onnx"].pop("sha256"), r"files\['model\.onnx'\]\.sha256 is missing"),
        (lambda m: m["files"]["model.onnx"].update(bytes="2951524"), r"files\['model\.onnx'\]\.bytes is str"),
        (lambda m: m.pop("contract"), r"contract is missing"),
        (lambda m: m.update(variants=[]), r"variants is list \[\], expected an object"),
        (lambda m: m["variants"]["fp32"].pop("parity"), r"variants\.fp32\.parity is missing"),
        (lambda m: m["variants"]["fp32"].update(file=3), r"variants\.fp32\.file is int 3, expected a string"),
        (lambda m: m["dictionary"].pop("file"), r"dictionary\.file is missing"),
        (lambda m: m["contract"].update(height="112"), r"contract\.height is str '112', expected an integer"),
        (lambda m: m["contract"].update(l2_normalized="no"), r"contract\.l2_normalized is str 'no'"),
        (lambda m: m["contract"].update(feature_shape=[32, 7]), r"contract\.feature_shape is \[32, 7\]"),
        (lambda m: m["contract"]["grid"].update(rows=None), r"contract\.grid\.rows is NoneType"),
        (lambda m: m["contract"]["inputs"].update(image="img"), r"contract\.inputs is .*'img'.*binds"),
        (lambda m: m.update(engines={"e": {"file": "model.onnx"}}), r"engines\.e\.flavour is missing"),
    ],
)
def test_a_tampered_manifest_is_refused_naming_the_entry(tiny_bundle, tmp_path, change, message):
    bundle = _copy(tiny_bundle, tmp_path)
    shutil.copy(bundle / "model.onnx", bundle / "copy.onnx")
    _edit(bundle, change)
    for read in (read_manifest, open_bundle, Recognizer.open):
        with pytest.raises(BundleFormatError, match=message) as error:
            read(bundle)
        assert "is malformed" in str(error.value) and "pdsn export" in str(error.value)
    assert issubclass(BundleFormatError, BundleIntegrityError) and issubclass(BundleFormatError, ValueError)


def test_absurd_nesting_is_a_format_error_not_a_recursion_error(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    text = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(
        text.replace('"created"', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "created"')
    )
    with pytest.raises(BundleFormatError, match="nests too deeply"):
        open_bundle(bundle)


def _outside_copy(bundle: Path, relative: str) -> Path:
    outside = bundle.parent / "outside"
    outside.mkdir(exist_ok=True)
    return Path(shutil.copy(bundle / relative, outside / Path(relative).name))


def test_a_symlink_leaving_the_bundle_is_refused_even_with_matching_hashes(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    target = _outside_copy(bundle, "model.onnx")
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(target)
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx: passes through the symbolic link model\.onnx"):
        open_bundle(bundle)
    with pytest.raises(BundleIntegrityError, match=r"variants\.fp32\.file = 'model\.onnx' passes through the symbolic"):
        Recognizer.open(bundle, verify=False)


def test_a_symlinked_folder_is_refused(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    outside = Path(shutil.move(bundle / "reports", tmp_path / "elsewhere"))
    (bundle / "reports").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleIntegrityError, match=r"reports/parity\.json: passes through the symbolic link reports"):
        open_bundle(bundle)
    loaded = open_bundle(bundle, verify=False)
    with pytest.raises(BundleIntegrityError, match=r"variants\.fp32\.parity\.reference_embeddings = "):
        loaded.file("reports/reference-embeddings.npz")


def test_bundle_file_refuses_what_the_manifest_does_not_list(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    shutil.copy(bundle / "model.onnx", bundle / "copy.onnx")
    loaded = open_bundle(bundle)
    with pytest.raises(BundleIntegrityError, match=r"entry engines\.x\.file = 'copy\.onnx' is not listed"):
        loaded.file("copy.onnx", "engines.x.file")
    assert loaded.file("model.onnx") == bundle / "model.onnx"


@pytest.mark.parametrize(
    ("change", "backend", "message"),
    [
        (
            lambda c: c.update(embedding_size=256),
            "onnxruntime",
            r"output 'embedding' has shape \(N, 512\), the contract says \(N, 256\)",
        ),
        (lambda c: c.update(embedding_size=256), "openvino", r"output 'embedding' has shape \(N, 512\)"),
        (
            lambda c: c.update(image_layout="nchw-float32"),
            "onnxruntime",
            r"(?s)input 'image' is uint8, the contract says float32.*shape \(N, 112, 96, 3\), the contract says "
            r"\(N, 3, 112, 96\)",
        ),
        (
            lambda c: c.update(dictionary_binding="embedded", inputs={**c["inputs"], "dictionary": None}),
            "onnxruntime",
            r"input 'fdm_dictionary' is not in the contract",
        ),
    ],
)
def test_a_contract_that_lies_about_the_model_is_refused_at_open(tiny_bundle, tmp_path, change, backend, message):
    if backend == "openvino":
        pytest.importorskip("openvino")
    bundle = _copy(tiny_bundle, tmp_path)
    _edit(bundle, lambda m: change(m["contract"]))
    with pytest.raises(BundleIntegrityError, match=message) as error:
        Recognizer.open(bundle, backend=backend)
    assert "model.onnx does not match the bundle's contract" in str(error.value)


def test_a_model_with_a_renamed_input_is_refused(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    for value in model.graph.input:
        value.name = "img" if value.name == "image" else value.name
    for node in model.graph.node:
        node.input[:] = ["img" if name == "image" else name for name in node.input]
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle).document())  # consistently re-hashed: only the contract check sees it
    with pytest.raises(BundleIntegrityError, match=r"(?s)input 'image' is missing.*input 'img' is not in the contract"):
        Recognizer.open(bundle)


def test_check_model_io_takes_the_plugins_packed_dictionary_and_wants_a_dynamic_batch():
    contract = ModelContract(feature_shape=(32, 7, 6))
    inputs = [
        TensorSpec("image", "uint8", (None, 112, 96, 3)),
        TensorSpec("occlusion", "float32", (None, 25)),
        TensorSpec("fdm_dictionary_packed", "int32", (25, 42)),
    ]
    outputs = [TensorSpec("embedding", "float32", (None, 512))]
    check_model_io(contract, inputs, outputs, "engine e")
    with pytest.raises(
        BundleIntegrityError, match=r"engine e .*\n  input 'occlusion' has shape \(4, 25\), .*\(N, 25\)"
    ):
        check_model_io(
            contract, [inputs[0], TensorSpec("occlusion", "float32", (4, 25)), inputs[2]], outputs, "engine e"
        )
    with pytest.raises(BundleIntegrityError, match=r"output 'embedding' is float16, the contract says float32"):
        check_model_io(contract, inputs, [TensorSpec("embedding", "float16", (None, 512))], "engine e")


def test_verify_says_every_file_matches_only_when_it_does(tiny_bundle, tmp_path, capsys):
    bundle = _copy(tiny_bundle, tmp_path)
    assert main(["verify", "--bundle", str(bundle), "--faces", "4", "--report", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "every file matches its manifest hash" in out
    assert f"manifest SHA-256 {manifest_digest(bundle)}" in out
    target = _outside_copy(bundle, "dictionary.npy")
    (bundle / "dictionary.npy").unlink()
    (bundle / "dictionary.npy").symlink_to(target)
    assert main(["verify", "--bundle", str(bundle), "--faces", "4", "--report", str(tmp_path / "v.json")]) == 2
    printed = capsys.readouterr()
    assert "every file matches" not in printed.out and "dictionary.npy: passes through the symbolic link" in printed.err


def test_verify_reports_leftovers_and_leaves_them(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / ".pdsn-staging-dead").mkdir()
    (bundle / ".pdsn-tmp-1234-manifest.json").write_text("{")
    result = verify_bundle(bundle, holdout=4)
    assert result["leftovers"] == [".pdsn-staging-dead", ".pdsn-tmp-1234-manifest.json"]
    assert "warning: interrupted writes left .pdsn-staging-dead, .pdsn-tmp-1234-manifest.json" in format_verification(
        result
    )
    assert (bundle / ".pdsn-staging-dead").is_dir() and (bundle / ".pdsn-tmp-1234-manifest.json").is_file()


def test_a_pinned_digest_detects_a_consistently_rehashed_replacement(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    pinned = manifest_digest(bundle)
    assert pinned == sha256_file(bundle / MANIFEST_NAME) == open_bundle(bundle, expected_digest=pinned).digest
    np.save(bundle / "dictionary.npy", 1.0 - np.load(bundle / "dictionary.npy"))  # another binary dictionary
    write_manifest(bundle, read_manifest(bundle).document())
    open_bundle(bundle)  # every hash matches: only the pin can tell
    for opening in (
        lambda: open_bundle(bundle, expected_digest=pinned),
        lambda: verify_bundle(bundle, holdout=4, expected_digest=pinned),
    ):
        with pytest.raises(BundleIntegrityError, match=f"SHA-256 {manifest_digest(bundle)}, but {pinned} was pinned"):
            opening()
    with pytest.raises(ValueError, match="expected 64 hex digits"):
        open_bundle(bundle, expected_digest="abc")
