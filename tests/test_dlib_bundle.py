"""dlib's face ResNet through the whole pipeline: ``pdsn import dlib``, ``pdsn export``, the runtime.

The reference is dlib itself (the dev extra's dlib-bin 20.0.1) on the same chips: dlib's own chips of
the registry's real photos (t1.jpg with six people, four portraits of Biden and Obama: 10 faces of
8 people). The bundle must give dlib's descriptors on them (cosine >= 0.9999, distance <= 1e-3), on
every backend, and must cut a photo's faces as dlib's chip (``pdsn.model.dlib_chip``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pdsn.bench.dlib_peer import dlib_chips, dlib_descriptors, dlib_model_files
from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.cli import main
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.export.onnx_export import ExportOptions
from pdsn.model.checkpoint import CheckpointError, load_recognition_model
from pdsn.model.crop_alignment import DLIB_CHIP_150
from pdsn.model.dlib_chip import dlib_chip
from pdsn.model.dlib_resnet import DlibResNet
from pdsn.model.network import architecture_by_name
from pdsn.runtime import Recognizer
from pdsn.runtime.detection import FaceDetector, default_detector_files
from pdsn.runtime.photos import DetectionSettings
from pdsn.runtime.preprocess import load_image

MIN_COSINE = 0.9999
MAX_DISTANCE = 1e-3


@pytest.fixture(scope="module")
def dlib_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("dlib") / "dlib.pth"
    assert main(["import", "dlib", str(dlib_model_files()["face_recognition"]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dictionary_file(tmp_path_factory):
    """A binary dictionary of dlib's feature map's shape (the exporter checks shapes, not how it was learnt)."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("dict") / "dictionary.npy"
    np.save(path, (rng.uniform(size=(25, 256, 2, 2)) > 0.1).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def dlib_bundle(tmp_path_factory, dlib_checkpoint, dictionary_file):
    out = tmp_path_factory.mktemp("bundles") / "dlib"
    export_bundle(ExportRequest(out=out, checkpoint=dlib_checkpoint, dictionary=dictionary_file))
    return out


@pytest.fixture(scope="module")
def chips():
    """dlib's own chips of every face in the real photos, and the count of people they show."""
    found = []
    for photo in [group_photo(), *portrait_photos()]:
        found.extend(dlib_chips(np.asarray(Image.open(photo).convert("RGB"))))
    return np.stack(found)


def test_import_checks_against_dlib(dlib_checkpoint, capsys, tmp_path):
    model, _ = load_recognition_model(dlib_checkpoint)
    assert isinstance(model, DlibResNet)
    assert model.contract_fields()["normalization"]["mean"] == pytest.approx(
        [122.782 / 256, 117.001 / 256, 104.298 / 256], abs=1e-6
    )
    again = tmp_path / "again.pth"
    assert main(["import", "dlib", str(dlib_model_files()["face_recognition"]), "--out", str(again)]) == 0
    printed = capsys.readouterr().out
    assert "against dlib 20.0.1 compute_face_descriptor on 8 chips" in printed and ": pass" in printed


def test_import_refuses_what_is_not_dlibs_network(tmp_path, capsys):
    out = tmp_path / "x.pth"
    assert main(["import", "dlib", str(dlib_model_files()["shape_predictor_5"]), "--out", str(out)]) == 2
    assert "is not dlib's face recognition ResNet v1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["import", "dlib", str(tmp_path / "absent.dat"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_import_keeps_an_existing_file(dlib_checkpoint, capsys):
    before = dlib_checkpoint.read_bytes()
    source = str(dlib_model_files()["face_recognition"])
    assert main(["import", "dlib", source, "--out", str(dlib_checkpoint)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert dlib_checkpoint.read_bytes() == before


def test_architecture_applies_to_lresnet_checkpoints_only(dlib_checkpoint):
    with pytest.raises(CheckpointError, match="layers are fixed"):
        load_recognition_model(dlib_checkpoint, architecture_by_name("lresnet-ir-tiny"))


def test_bundle_contract(dlib_bundle):
    manifest = json.loads((dlib_bundle / "manifest.json").read_text())
    contract = manifest["contract"]
    assert (contract["height"], contract["width"], contract["alignment"]) == (150, 150, DLIB_CHIP_150)
    assert contract["grid"]["x_bounds"] == contract["grid"]["y_bounds"] == [0, 30, 60, 90, 120, 150]
    assert contract["normalization"]["scale"] == 256.0 and contract["normalization"]["std"] == 1.0
    assert len(contract["normalization"]["mean"]) == 3
    assert (contract["feature_shape"], contract["embedding_size"]) == ([256, 2, 2], 128)
    assert manifest["model"]["architecture"]["name"] == "dlib-face-resnet-v1"
    parity = manifest["variants"]["fp32"]["parity"]
    assert parity["passed"] and parity["cosine_min"] > 0.99999
    assert manifest["detector"]["files"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bundle_gives_dlibs_descriptors(dlib_bundle, chips, backend):
    with Recognizer.open(dlib_bundle, backend=backend) as recognizer:
        ours = recognizer.embed(chips)
    theirs = dlib_descriptors(chips)
    cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    distance = np.linalg.norm(ours - theirs, axis=1)
    print(
        f"\n{backend}: {len(chips)} chips of 8 people: cosine min {cosine.min():.7f}, distance max {distance.max():.1e}"
    )
    assert len(chips) == 10
    assert cosine.min() >= MIN_COSINE
    assert distance.max() <= MAX_DISTANCE


def test_float_input_bundle_normalises_per_channel(tmp_path, dlib_checkpoint, dictionary_file, dlib_bundle, chips):
    out = tmp_path / "float"
    options = ExportOptions(image_layout="nchw-float32")
    export_bundle(ExportRequest(out=out, checkpoint=dlib_checkpoint, dictionary=dictionary_file, options=options))
    with Recognizer.open(out, backend="onnxruntime") as floats, Recognizer.open(dlib_bundle) as uint8:
        np.testing.assert_allclose(
            floats.embed(floats.contract.normalized_nchw(chips)), uint8.embed(chips), rtol=0, atol=2e-6
        )


def test_photos_are_cut_as_dlibs_chip(dlib_bundle):
    image = load_image(group_photo())
    faces = FaceDetector(*default_detector_files()).detect(image, min_face=40)
    with Recognizer.open(dlib_bundle, backend="onnxruntime") as recognizer:
        found = recognizer.embed(image, detection=DetectionSettings(min_face=40))
        by_chip = recognizer.embed(np.stack([dlib_chip(image, face.landmarks) for face in faces]))
        assert len(faces) == 6
        boxes = {tuple(np.round(f.face.box, 3)): f.embedding for f in found}
        for face, expected in zip(faces, by_chip):
            np.testing.assert_array_equal(boxes[tuple(np.round(face.box, 3))], expected)
        with pytest.raises(ValueError, match="landmarks"):
            recognizer.embed(image, landmarks=np.zeros((5, 2)))


def test_a_112x112_array_is_a_photo_to_a_dlib_bundle(dlib_bundle):
    """insightface's 112x112 crops hold the 112x96 crop, which is not dlib's chip: such an array is a photo."""
    with Recognizer.open(dlib_bundle, backend="onnxruntime") as recognizer:
        assert recognizer.embed(np.zeros((150, 150, 3), dtype=np.uint8)).shape == (1, 128)
        with pytest.raises(ValueError, match="no face"):
            recognizer.embed(np.zeros((112, 112, 3), dtype=np.uint8))


def test_verify_checks_every_part(dlib_bundle, capsys):
    assert main(["verify", "--bundle", str(dlib_bundle)]) == 0
    assert "detector" in capsys.readouterr().out


def test_variants_pass_their_gates_calibrated_on_real_chips(dlib_bundle, tmp_path, capsys):
    """FP16 and INT8 of dlib's network, INT8 calibrated on real chips and both judged on held-out real chips."""
    from pdsn.bench.real_faces import write_identity_folders

    faces = tmp_path / "faces"
    write_identity_folders(faces, per_face=12, seed=3)
    bundle = tmp_path / "bundle"
    shutil.copytree(dlib_bundle, bundle)
    calib = ["--calib", str(faces), "--holdout", "32"]
    assert main(["quantize", "--bundle", str(bundle), "--precision", "fp16", *calib]) == 0
    assert main(["quantize", "--bundle", str(bundle), "--precision", "int8", "--samples", "88", *calib]) == 0
    variants = json.loads((bundle / "manifest.json").read_text())["variants"]
    assert variants["fp16"]["parity"]["passed"] and variants["int8"]["parity"]["passed"]
    calibration = variants["int8"]["calibration"]
    assert calibration["samples"] == 88 and not calibration["synthetic"] and "(88 of 120)" in calibration["source"]
    with Recognizer.open(bundle, backend="openvino", precision="int8") as recognizer:
        assert recognizer.embed(np.zeros((2, 150, 150, 3), dtype=np.uint8)).shape == (2, 128)


def test_triton_serves_dlibs_chips_and_the_whole_photo_pipeline(dlib_bundle, chips, tmp_path):
    """The python kind of `pdsn triton-repo` on a real Triton server: 150x150 chips in, and the faces
    model cutting dlib's chips from a photo itself, as the in-process runtime does."""
    pytest.importorskip("tritonclient.grpc", reason='needs pip install "tritonclient[http,grpc]"')
    import tritonclient.grpc as grpcclient
    from triton_harness import LocalTritonServer, server_env

    from pdsn.triton_repo.repository import RepositoryRequest, write_repository

    env = server_env()
    write_repository(RepositoryRequest(dlib_bundle, tmp_path / "repo", kind="python"))
    photo = group_photo().read_bytes()
    with (
        LocalTritonServer(tmp_path / "repo", tmp_path / "server.log", env) as server,
        Recognizer.open(dlib_bundle, backend="onnxruntime") as local,
        Recognizer.open(dlib_bundle, backend="triton", url=server.grpc_url, protocol="grpc") as remote,
    ):
        np.testing.assert_allclose(remote.embed(chips), local.embed(chips), rtol=0, atol=1e-5)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput("photo", [1], "BYTES"), grpcclient.InferInput("min_face", [1], "FP32")]
        inputs[0].set_data_from_numpy(np.array([photo], dtype=object))
        inputs[1].set_data_from_numpy(np.array([40.0], np.float32))
        embeddings = client.infer("pdsn_faces", inputs).as_numpy("embedding")
        expected = local.embed(photo, detection=DetectionSettings(min_face=40))
    assert embeddings.shape == (6, 128)
    np.testing.assert_allclose(embeddings, np.stack([f.embedding for f in expected]), rtol=0, atol=1e-5)


def test_a_tensorrt_rtx_engine_builds_for_dlibs_network(dlib_bundle, tmp_path):
    """Built on this CPU machine; running it needs an NVIDIA GPU (the GPU check runs engines where there is one)."""
    rtx = pytest.importorskip("tensorrt_rtx_bindings")
    bundle = tmp_path / "bundle"
    shutil.copytree(dlib_bundle, bundle)
    assert main(["build", "--bundle", str(bundle), "--flavour", "tensorrt-rtx", "--batch", "1,8,16", "--quiet"]) == 0
    engines = json.loads((bundle / "manifest.json").read_text())["engines"]
    (entry,) = engines.values()
    assert entry["file"] == f"engines/tensorrt-rtx-{rtx.__version__}-portable-fp32-b1-8-16.engine"
    assert entry["profile"] == {"min": 1, "opt": 8, "max": 16}


def test_the_serve_benchmark_sends_crops_of_the_bundles_own_size(dlib_bundle):
    """dlib's chips are 150x150: the benchmark's seeded faces follow the bundle's contract, not 112x96."""
    from pdsn.bench.serve import ServeBenchConfig, run_serve_benchmark

    config = ServeBenchConfig(
        backend="onnxruntime", precision="fp32", clients=(1,), routes=("v2-binary",), seconds=0.3,
        warmup_seconds=0.1, rounds=1,
    )  # fmt: skip
    result = run_serve_benchmark(dlib_bundle, config, progress=False)
    assert [(row["path"], row["requests"] > 0) for row in result["rows"]] == [("in-process", True), ("v2-binary", True)]
