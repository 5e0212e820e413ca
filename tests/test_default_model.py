"""The embedded defaults: dlib's face ResNet exports by default; the trained demo model (synthetic faces) on
request, seeded LResNet50E-IR for timing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pdsn.bench.timing_bundle import prepare_timing_bundle
from pdsn.cli import main
from pdsn.demo import prepare_demo_bundle
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.model.demo_weights import TRAINED_DEMO_CHECKPOINT
from pdsn.model.network import LRESNET50E_IR
from pdsn.model.sample_faces import seeded_faces
from pdsn.model.shipped_models import DLIB_CHECKPOINT
from pdsn.runtime import Recognizer
from pdsn.train.synthetic import SyntheticFaces


def test_export_without_a_checkpoint_is_dlibs_model(tmp_path):
    result = export_bundle(ExportRequest(out=tmp_path / "default", parity_faces=2))
    model = result.manifest.document()["model"]
    assert model["weights"] == "dlib-face-resnet-v1" and "public domain" in model["label"]
    assert model["architecture"]["name"] == "dlib-face-resnet-v1"
    assert model["checkpoint"]["path"] == str(DLIB_CHECKPOINT)
    assert result.manifest.document()["contract"]["alignment"] == "dlib-chip-150"
    estimator = result.manifest.document()["estimator"]["contract"]
    assert estimator["inputs"]["image"]["shape"] == ["N", 150, 150, 3]
    assert estimator["grid"] == result.manifest.document()["contract"]["grid"]
    decision = result.manifest.document()["decision"]
    assert 0.0 < decision["threshold"] < 1.0 and decision["far"] == 0.0
    assert decision["same_pairs"] > 100 and decision["different_pairs"] > 1000 and decision["people"] == 8


def test_weights_demo_is_the_trained_demo_model(tmp_path):
    result = export_bundle(ExportRequest(out=tmp_path / "default", parity_faces=2, weights="demo"))
    model = result.manifest.document()["model"]
    assert model["weights"] == "trained-demo" and "SYNTHETIC" in model["label"]
    assert model["architecture"]["name"] == "lresnet-ir-tiny"
    assert model["checkpoint"]["path"] == str(TRAINED_DEMO_CHECKPOINT)
    assert "trained PDSNs" in result.manifest.document()["dictionary"]["source"]
    faces, _ = SyntheticFaces(2, 2, seed=5).generate()
    with Recognizer.open(result.bundle) as recognizer:
        same = recognizer.verify(faces[0], faces[1]).score
        different = recognizer.verify(faces[0], faces[2]).score
    assert same > different + 0.2, "the trained model tells synthetic identities apart"


def test_the_demo_model_refuses_another_architecture_and_seeded_weights_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="shipped trained-demo model is lresnet-ir-tiny.*--weights seeded"):
        export_bundle(ExportRequest(out=tmp_path / "a", architecture=LRESNET50E_IR, weights="demo"))
    with pytest.raises(ValueError, match="shipped dlib-face-resnet-v1 model is dlib-face-resnet-v1, not lresnet50e-ir"):
        export_bundle(ExportRequest(out=tmp_path / "a", architecture=LRESNET50E_IR))
    with pytest.raises(ValueError, match="not both"):
        export_bundle(ExportRequest(out=tmp_path / "b", checkpoint=TRAINED_DEMO_CHECKPOINT, weights="seeded"))
    with pytest.raises(ValueError, match="--dictionary is required with --checkpoint"):
        export_bundle(ExportRequest(out=tmp_path / "c", checkpoint=TRAINED_DEMO_CHECKPOINT))
    assert not any(tmp_path.iterdir()), "a refused export writes nothing"


@pytest.mark.slow
def test_seeded_lresnet50e_ir_bundle(tmp_path):
    result = export_bundle(ExportRequest(out=tmp_path / "timing", weights="seeded"))
    manifest = result.manifest.document()
    assert manifest["model"]["architecture"]["name"] == "lresnet50e-ir"
    assert manifest["model"]["weights"] == "seeded" and "SEEDED WEIGHTS" in manifest["model"]["label"]
    assert manifest["contract"]["feature_shape"] == [512, 7, 6]
    assert result.parity["passed"]
    with Recognizer.open(result.bundle) as recognizer:
        out = recognizer.embed(seeded_faces(2), occlusion=[20, 21, 22, 23, 24])
    assert out.shape == (2, 512) and np.isfinite(out).all()


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    out, timing = tmp_path / "demo", tmp_path / "timing"
    command = [
        "demo",
        "--synthetic",
        "--out",
        str(out),
        "--bench-work",
        str(timing),
        "--bench-architecture",
        "lresnet10e-ir",
        "--eval-pairs",
        "200",
    ]
    assert main(command) == 0
    printed = capsys.readouterr().out
    from pdsn.runtime.backends import resolve_backend

    runtime = resolve_backend("auto", "cpu", {})  # what the demo's accuracy rows run on here
    for step in (
        "[1/6]",
        "[2/6]",
        "[3/6]",
        "[4/6]",
        "[5/6]",
        "[6/6]",
        "pytorch-eager-fp32",
        "onnxruntime-fp32",
        "onnxruntime-int8",
        "fp16: cosine min",
        "int8: cosine min",
        "`pdsn verify`",
        "int8 on onnxruntime",
        f"| {runtime} int8 | occluded | on |",
        "identification, 12 identities enrolled clean",
        "the estimator found exactly the true cells",
    ):
        assert step in printed
    assert "FAIL" not in printed
    rows = {
        line.split("|")[1].strip() + "/" + line.split("|")[3].strip(): float(line.split("|")[4].split("%")[0])
        for line in printed.splitlines()
        if line.strip().startswith("| ") and "%" in line
    }
    for model in ("pytorch fp32", f"{runtime} fp32", f"{runtime} fp16", f"{runtime} int8"):
        assert rows[f"{model}/on"] > rows[f"{model}/off"], f"{model}: FDM lifts occluded accuracy"
    timing_stamp = (timing / "manifest.json").stat().st_mtime_ns
    prepare_demo_bundle(out, progress=False)
    prepare_timing_bundle(timing, "lresnet10e-ir", reuse=True, progress=False)
    assert (timing / "manifest.json").stat().st_mtime_ns == timing_stamp, "a rerun reuses the timing bundle"


def test_demo_refuses_to_replace_other_bundles(tiny_bundle, tmp_path, capsys):
    assert main(["demo", "--synthetic", "--out", str(tiny_bundle)]) == 2
    assert "something other than the demo bundle" in capsys.readouterr().err
    assert main(["demo", "--photo", str(tmp_path / "any.jpg"), "--out", str(tiny_bundle)]) == 2
    assert "something other than the demo bundle of dlib's model" in capsys.readouterr().err
    assert main(["bench", "--work", str(tiny_bundle), "--no-sweep"]) == 2
    assert "something other than a timing bundle" in capsys.readouterr().err


def test_photo_demo_runs_on_a_real_group_photo(tmp_path, capsys):
    from pdsn.bench.real_photos import group_photo

    assert main(["demo", "--photo", str(group_photo()), "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    for step in (
        "[1/4]",
        "[2/4] t1.jpg: 6 faces found",
        "[3/4]",
        "[4/4]",
        "FDM, true cells:",
        "FDM, estimator's cells",
    ):
        assert step in printed
    assert "FAIL" not in printed
    people, right, found = None, 0, 0
    for line in printed.splitlines():
        if " behind " in line and "covering cells" in line:
            people = line.split()[0]
        elif "best match" in line:
            found += 1
            right += line.split("best match ")[1].split(",")[0] == people
    assert found >= 8 and right == found, "every occluded face the detector finds is identified as its person"


@pytest.fixture(scope="module")
def shipped_bundles(tmp_path_factory):
    """The default (dlib's) bundle and the trained demo model's, as `pdsn export` writes them."""
    folder = tmp_path_factory.mktemp("shipped")
    dlib = export_bundle(ExportRequest(out=folder / "dlib", parity_faces=2)).bundle
    demo = export_bundle(ExportRequest(out=folder / "demo", parity_faces=2, weights="demo")).bundle
    return dlib, demo


def test_compare_decides_at_the_bundles_threshold_and_the_synthetic_model_says_what_it_is(shipped_bundles, capsys):
    from pdsn.bench.real_photos import portrait_photos

    dlib, demo = shipped_bundles
    biden, obama = (str(p) for p in portrait_photos()[:2])
    assert main(["compare", "--bundle", str(dlib), biden, obama]) == 0
    printed = capsys.readouterr().out
    assert "different people (threshold 0.9494, the bundle's, set on 472 same-person and 2688" in printed
    assert "note:" not in printed
    assert main(["compare", "--bundle", str(demo), biden, obama, "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "(threshold 0.5, given)" in printed
    assert "note: this model was trained on synthetic faces only" in printed
    assert main(["embed", "--bundle", str(demo), biden]) == 0
    assert all(json.loads(line)["model_note"].startswith("this model") for line in capsys.readouterr().out.splitlines())


def test_the_service_decides_at_the_bundles_threshold_and_notes_a_synthetic_model(shipped_bundles, tmp_path):
    import base64

    import httpx
    from serve_harness import ServerProcess

    from pdsn.bench.real_photos import portrait_photos

    dlib, demo = shipped_bundles
    photos = [base64.b64encode(p.read_bytes()).decode() for p in portrait_photos()[:2]]
    for bundle, note in ((dlib, False), (demo, True)):
        with (
            ServerProcess(bundle, tmp_path / f"{bundle.name}.log", "--backend", "onnxruntime") as server,
            httpx.Client(base_url=server.url, timeout=60.0) as http,
        ):
            body = http.post("/v1/verify", json={"image_a": photos[0], "image_b": photos[1]}).json()
        if note:
            assert body["threshold"] is None and body["match"] is None
            assert body["model_note"].startswith("this model was trained on synthetic faces only")
        else:
            assert body["threshold"] == 0.9494 and body["match"] is False and body["model_note"] is None


def test_the_default_weights_must_be_made_and_be_the_ones_its_dictionary_was_learnt_for(tmp_path, monkeypatch):
    """The 22 MB weights are not in git: a checkout without them, or with other weights, says how to make them."""
    import pdsn.export.bundle_writer as writer
    from pdsn.bench.dlib_peer import dlib_model_files
    from pdsn.model.checkpoint import CheckpointError, load_recognition_model, save_checkpoint

    monkeypatch.setattr(writer, "DLIB_CHECKPOINT", tmp_path / "model.pth")
    with pytest.raises(FileNotFoundError, match="not made yet: make them with `bash scripts/default-model.sh`"):
        export_bundle(ExportRequest(out=tmp_path / "a"))
    source = dlib_model_files()["face_recognition"]
    assert main(["import", "dlib", str(source), "--out", str(tmp_path / "model.pth")]) == 0
    export_bundle(ExportRequest(out=tmp_path / "b", parity_faces=2))

    model, _ = load_recognition_model(tmp_path / "model.pth")
    model.fc.weight.data[0, 0] += 1e-3
    save_checkpoint(tmp_path / "model.pth", model)
    with pytest.raises(CheckpointError, match="holds other weights than the default model's dictionary"):
        export_bundle(ExportRequest(out=tmp_path / "c"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
