"""The `pdsn` command: export, embed, compare, verify, and errors that exit 2 with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pdsn.cli import main
from pdsn.model.sample_faces import seeded_faces


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for i, face in enumerate(seeded_faces(2, seed=11)):
        paths.append(folder / f"face{i}.png")
        Image.fromarray(face).save(paths[-1])
    return paths


def test_export_from_a_checkpoint_and_verify(tmp_path, tiny_checkpoint, tiny_dictionary_file, capsys):
    out = tmp_path / "bundle"
    code = main(
        ["export", "--checkpoint", str(tiny_checkpoint), "--dictionary", str(tiny_dictionary_file), "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "sunglasses" in printed and "pass" in printed and f"wrote {out}" in printed
    assert main(["verify", "--bundle", str(out)]) == 0
    assert "every file matches its manifest hash" in capsys.readouterr().out


def test_embed_prints_json_lines(tiny_bundle, face_files, capsys):
    assert main(["embed", "--bundle", str(tiny_bundle), *map(str, face_files), "--occlusion", "10,11,12,13"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, face_files))
    assert all(len(line["embedding"]) == 512 for line in lines)


def test_embed_writes_npy(tiny_bundle, face_files, tmp_path):
    out = tmp_path / "e.npy"
    assert main(["embed", "--bundle", str(tiny_bundle), str(face_files[0]), "--out", str(out)]) == 0
    assert np.load(out).shape == (1, 512)


def test_compare(tiny_bundle, face_files, capsys):
    assert (
        main(
            [
                "compare",
                "--bundle",
                str(tiny_bundle),
                str(face_files[0]),
                str(face_files[0]),
                "--occlusion-b",
                "20,21,22,23,24",
                "--threshold",
                "0.5",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "masked cells: [20, 21, 22, 23, 24]" in printed and "same person" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--bundle", "{bundle}", "{missing}"], "no such file"),
        (["embed", "--bundle", "{bundle}", "{wrong_size}"], "no face found"),
        (["embed", "--bundle", "{bundle}", "{face}", "--occlusion", "30"], "occlusion"),
        (["embed", "--bundle", "{missing}", "{face}"], "not a directory"),
        (["export", "--out", "{bundle}"], "already exists"),
        (["export", "--checkpoint", "{face}", "--out", "{new}"], "not a PyTorch checkpoint"),
        (["export", "--tau", "0.3", "--out", "{new}"], "tau 0.3 was given, but the dictionary"),
        (["export", "--tau", "0.3", "--threshold", "0.5", "--out", "{new}"], "pass one of them"),
        (["export", "--weights", "seeded", "--threshold", "0.5", "--out", "{new}"], "--threshold"),
    ],
)
def test_errors_exit_2_with_a_message(argv, message, tiny_bundle, face_files, tmp_path, capsys):
    wrong = tmp_path / "big.png"
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(wrong)
    values = {
        "bundle": tiny_bundle,
        "missing": tmp_path / "absent",
        "face": face_files[0],
        "wrong_size": wrong,
        "new": tmp_path / "new",
    }
    assert main([part.format(**values) for part in argv]) == 2
    assert message in capsys.readouterr().err


def test_quantize_and_verify_commands(tiny_bundle, tmp_path, capsys):
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert main(["quantize", "--bundle", str(bundle), "--precision", "fp16", "--holdout", "8"]) == 0
    assert "fp16 variant model.fp16.onnx passed its gate" in capsys.readouterr().out
    int8 = ["quantize", "--bundle", str(bundle), "--calib", "synthetic", "--method", "minmax", "--samples", "16"]
    assert main([*int8, "--holdout", "8", "--mean-cosine", "0.0"]) == 0
    assert main(["verify", "--bundle", str(bundle), "--faces", "8"]) == 0
    printed = capsys.readouterr().out
    assert "fp16 on onnxruntime" in printed and "int8 on onnxruntime" in printed and "fp32 on onnxruntime" in printed
    assert (bundle / "reports" / "verify.json").is_file()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["quantize", "--bundle", "{bundle}", "--min-cosine", "nan"], "--min-cosine"),
        (["quantize", "--bundle", "{bundle}", "--mean-cosine", "1.5"], "--mean-cosine"),
        (["quantize", "--bundle", "{bundle}", "--p1-cosine", "inf"], "--p1-cosine"),
        (["quantize", "--bundle", "{bundle}", "--calib", "synthetic", "--samples", "0"], "--samples"),
        (["quantize", "--bundle", "{bundle}", "--holdout", "-3"], "--holdout"),
        (["verify", "--bundle", "{bundle}", "--faces", "0"], "--faces"),
        (["verify", "--bundle", "{bundle}", "--report", "{folder}"], "--report"),
        (["verify", "--bundle", "{bundle}", "--report", "{folder}/verify.txt"], "--report"),
        (["embed", "--bundle", "{bundle}", "{face}", "--out", "{folder}/e.txt"], "--out"),
        (["embed", "--bundle", "{bundle}", "{face}", "--backend", "magic"], "--backend"),
        (["compare", "--bundle", "{bundle}", "{face}", "{face}", "--threshold", "2"], "--threshold"),
    ],
)
def test_bad_option_values_are_refused_naming_the_flag(argv, flag, tiny_bundle, face_files, tmp_path, capsys):
    values = {"bundle": tiny_bundle, "face": face_files[0], "folder": tmp_path}
    with pytest.raises(SystemExit) as exited:
        main([part.format(**values) for part in argv])
    assert exited.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_embed_writes_exactly_the_path_given(tiny_bundle, face_files, tmp_path):
    out = tmp_path / "E.NPY"
    assert main(["embed", "--bundle", str(tiny_bundle), str(face_files[0]), "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "E.NPY.npy").exists() and np.load(out).shape == (1, 512)


def test_export_refuses_an_opset_the_exporter_did_not_write(tmp_path, monkeypatch, capsys):
    import pdsn.export.onnx_export as onnx_export

    trace = onnx_export._trace
    monkeypatch.setattr(onnx_export, "_trace", lambda graph, contract, opset: trace(graph, contract, 18))
    assert main(["export", "--opset", "17", "--out", str(tmp_path / "b")]) == 2
    assert "--opset 17 was asked for, but torch.onnx produced opset 18" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_programming_errors_are_tracebacks_not_user_errors(tiny_bundle, face_files, monkeypatch):
    import pdsn.runtime.photos as photos

    def broken(path, max_pixels):
        raise TypeError("a bug")

    monkeypatch.setattr(photos, "load_image", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["embed", "--bundle", str(tiny_bundle), str(face_files[0])])


def test_quantize_errors_exit_2(tiny_bundle, capsys):
    assert main(["quantize", "--bundle", str(tiny_bundle)]) == 2
    assert "--calib is required for int8" in capsys.readouterr().err
