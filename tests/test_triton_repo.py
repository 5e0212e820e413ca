"""`pdsn triton-repo`: every kind's config parses as Triton's ModelConfig, the ONNX embeds the dictionary exactly."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pdsn.commands.triton import add_triton_commands
from pdsn.model.manifest import read_manifest, write_manifest
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import Recognizer
from pdsn.triton_repo.repository import PYTHON_MODEL_SOURCE, RepositoryRequest, dictionary_sha256, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def _config(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _io(config) -> dict:
    data_type = model_config_pb2.DataType.Name
    return {t.name: (data_type(t.data_type), list(t.dims)) for t in [*config.input, *config.output]}


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_triton_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def _with_engine(source: Path, target: Path, inputs: dict, profile=(1, 4, 16)) -> Path:
    """A copy of ``source`` whose manifest lists a TensorRT engine file (placeholder bytes) of fp32."""
    bundle = Path(shutil.copytree(source, target))
    (bundle / "engines").mkdir()
    (bundle / "engines" / "model.fp32.engine").write_bytes(b"plan")
    manifest = read_manifest(bundle).document()
    manifest["files"]["engines/model.fp32.engine"] = {}
    variant = manifest["variants"]["fp32"]["file"]
    manifest["engines"] = {
        "model.fp32": {
            "file": "engines/model.fp32.engine",
            "flavour": "tensorrt",
            "version": "10.9.0",
            "precision": "fp32",
            "compute_capability": "sm90",
            "profile": dict(zip(("min", "opt", "max"), profile)),
            "inputs": inputs,
            "variant": {"file": variant, "sha256": manifest["files"][variant]["sha256"], "gate_passed": True},
        }
    }
    write_manifest(bundle, manifest)
    return bundle


def test_onnxruntime_kind_config_and_embedded_dictionary(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    assert _cli("triton-repo", "--bundle", str(tiny_bundle), "--out", str(repo), "--max-batch", "24") == 0
    config = _config(repo / "pdsn")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 24
    assert _io(config) == {
        "image": ("TYPE_UINT8", [112, 96, 3]),
        "occlusion": ("TYPE_FP32", [25]),
        "embedding": ("TYPE_FP32", [512]),
    }
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16, 24]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)]
    text = (repo / "pdsn" / "config.pbtxt").read_text()
    assert text.startswith("# Triton feeds every input") and "initializer" in text
    assert "initializer" in (repo / "README.md").read_text()
    features = _config(repo / "pdsn_features")
    assert _io(features) == {"image": ("TYPE_UINT8", [112, 96, 3]), "features": ("TYPE_FP32", [32, 7, 6])}

    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "pdsn" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "occlusion"]
    faces = seeded_faces(6)
    occlusion = np.zeros((6, 25), np.float32)
    occlusion[1, 12] = occlusion[2, 10:14] = occlusion[3, 20:25] = occlusion[4] = 1
    (embedded,) = session.run(["embedding"], {"image": faces, "occlusion": occlusion})
    with Recognizer.open(tiny_bundle, backend="onnxruntime", precision="fp32") as local:
        expected = local.embed(faces, occlusion=occlusion)
    np.testing.assert_array_equal(embedded, expected)


def test_python_kind_configs_bundle_copy_and_parameters(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    folders = write_repository(
        RepositoryRequest(tiny_bundle, repo, kind="python", model_name="face", instances=2, max_queue_delay_us=500)
    )
    assert [f.name for f in folders] == ["face", "face_features", "face_faces"]
    embedding, features = _config(repo / "face"), _config(repo / "face_features")
    faces = _config(repo / "face_faces")
    assert faces.backend == "python" and faces.max_batch_size == 0 and not faces.HasField("dynamic_batching")
    assert _io(faces) == {
        "photo": ("TYPE_STRING", [1]),
        "min_face": ("TYPE_FP32", [1]),
        "boxes": ("TYPE_FP32", [-1, 4]),
        "scores": ("TYPE_FP32", [-1]),
        "landmarks": ("TYPE_FP32", [-1, 5, 2]),
        "embedding": ("TYPE_FP32", [-1, 512]),
    }
    assert faces.parameters["pdsn_role"].string_value == "faces"
    for config in (embedding, features):
        assert config.backend == "python" and config.max_batch_size == 64
        assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16, 32, 64]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)]
        assert config.parameters["backend"].string_value == "onnxruntime"
        assert config.parameters["pdsn_precision"].string_value == "fp32"
    assert set(_io(embedding)) == {"image", "occlusion", "embedding"}
    assert _io(features)["features"] == ("TYPE_FP32", [32, 7, 6])
    assert features.parameters["bundle"].string_value == "../../face/1/bundle"
    assert (repo / "face" / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    copied = repo / "face" / "1" / "bundle"
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file()) == sorted(
        ["manifest.json", *manifest["files"]]
    )
    assert embedding.parameters["pdsn_model_sha256"].string_value == manifest["files"]["model.onnx"]["sha256"]
    assert features.parameters["pdsn_model_sha256"].string_value == manifest["files"]["trunk.onnx"]["sha256"]
    dictionary = np.load(tiny_bundle / "dictionary.npy")
    assert embedding.parameters["pdsn_dictionary_sha256"].string_value == dictionary_sha256(dictionary)


def test_tensorrt_kind_from_an_engine_that_holds_its_dictionary(tiny_float_bundle, tmp_path):
    bundle = _with_engine(tiny_float_bundle, tmp_path / "b", {"image": [-1, 3, 112, 96], "occlusion": [-1, 25]})
    repo = tmp_path / "repo"
    write_repository(RepositoryRequest(bundle, repo, kind="tensorrt", instances=3))
    config = _config(repo / "pdsn")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16]
    assert _io(config)["image"] == ("TYPE_FP32", [3, 112, 96])
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 3)]
    assert (repo / "pdsn" / "1" / "model.plan").read_bytes() == b"plan"
    assert _config(repo / "pdsn_features").max_batch_size == 16
    with pytest.raises(ValueError, match=r"exceeds engine .*profile \(batch 1\.\.16\)"):
        write_repository(RepositoryRequest(bundle, tmp_path / "r2", kind="tensorrt", max_batch=32))


def test_tensorrt_kind_refuses_an_engine_that_takes_the_dictionary(tiny_bundle, tmp_path):
    inputs = {"image": [-1, 112, 96, 3], "occlusion": [-1, 25], "fdm_dictionary_packed": [25, 42]}
    bundle = _with_engine(tiny_bundle, tmp_path / "b", inputs)
    with pytest.raises(
        ValueError, match=r"fdm_dictionary_packed.*--kind onnxruntime.*--kind python.*--embed-dictionary"
    ):
        write_repository(RepositoryRequest(bundle, tmp_path / "repo", kind="tensorrt"))
    assert not (tmp_path / "repo").exists()


def test_no_engine_of_the_precision_names_pdsn_build(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match=r"no TensorRT engine for fp32.*pdsn build --bundle .* --precision fp32"):
        write_repository(RepositoryRequest(tiny_bundle, tmp_path / "repo", kind="tensorrt"))


def test_refusals_name_what_to_change(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match=r"no int8 variant.*pdsn quantize"):
        write_repository(RepositoryRequest(tiny_bundle, tmp_path / "r", precision="int8"))
    with pytest.raises(ValueError, match="--model-name 'a/b'"):
        write_repository(RepositoryRequest(tiny_bundle, tmp_path / "r", model_name="a/b"))
    write_repository(RepositoryRequest(tiny_bundle, tmp_path / "r", kind="python"))
    with pytest.raises(FileExistsError, match="already holds model folder"):
        write_repository(RepositoryRequest(tiny_bundle, tmp_path / "r"))
    with pytest.raises(SystemExit):
        _cli("triton-repo", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "x"), "--kind", "tensorflow")


def test_platform_kinds_serve_the_detector_nets_for_a_client_side_cascade(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    folders = write_repository(RepositoryRequest(tiny_bundle, repo, kind="onnxruntime", gpu=False))
    assert [f.name for f in folders] == ["pdsn", "pdsn_features", "pdsn_pnet", "pdsn_rnet", "pdsn_onet"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    for net, side in (("pnet", -1), ("rnet", 24), ("onet", 48)):
        config = _config(repo / f"pdsn_{net}")
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
        assert _io(config)["image"] == ("TYPE_FP32", [-1, 3, side, side])
        assert (repo / f"pdsn_{net}" / "1" / "model.onnx").read_bytes() == (
            tiny_bundle / "detector" / f"{net}.onnx"
        ).read_bytes()
        assert (
            config.parameters["pdsn_model_sha256"].string_value == manifest["files"][f"detector/{net}.onnx"]["sha256"]
        )
    assert set(_io(_config(repo / "pdsn_onet"))) == {"image", "box_regression", "face_probability", "landmarks"}
    assert "cascade" in (repo / "README.md").read_text()
