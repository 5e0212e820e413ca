"""Checkpoint reading: every accepted layout, and every broken file rejected with a clear error."""

from __future__ import annotations

import logging

import pytest
import torch
from factories import TINY, randomized_model

from pdsn.model.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    infer_architecture,
    load_pdsn_model,
    load_recognition_model,
    read_state_dict,
    save_checkpoint,
)
from pdsn.model.network import LRESNET10E_IR, LRESNET50E_IR, LResNetIR, PDSNNetwork


def test_lresnet50e_ir_keys_and_shapes_follow_the_reference():
    state = LResNetIR(LRESNET50E_IR).state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert state["layer3.13.bn3.running_var"].shape == (256,)
    assert "layer3.14.bn1.weight" not in state and "layer1.1.downsample.0.weight" not in state
    assert state["layer4.2.prelu1.weight"].shape == (512,)
    assert state["fc.0.running_mean"].shape == (21504,)
    assert state["fc.2.weight"].shape == (512, 21504)
    assert state["fc.3.weight"].shape == (512,)
    assert LRESNET50E_IR.feature_shape == (512, 7, 6)
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in state if k.startswith("layer")}
    assert len(blocks) == 3 + 4 + 14 + 3


def test_trunk_output_is_the_feature_map():
    model = LResNetIR(TINY).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(2, 3, 112, 96)).shape == (2, *TINY.feature_shape)
        assert model(torch.zeros(2, 3, 112, 96)).shape == (2, 512)


def test_mask_generator_keys():
    state = PDSNNetwork(TINY).state_dict()
    assert state["sia.0.weight"].shape == (32, 32, 3, 3)
    assert state["sia.1.weight"].shape == (32,)
    assert state["sia.2.running_mean"].shape == (32,)


def _forward(model, seed=0):
    x = torch.randn(2, 3, 112, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("layout", ["nested", "nested-state_dict", "bare", "data-parallel", "with-sia"])
def test_accepted_layouts_load_identically(tmp_path, layout):
    source = randomized_model()
    state = source.state_dict()
    if layout == "nested":
        content = {"epoch": 7, "optim_state_dict": {}, "model_state_dict": state}
    elif layout == "nested-state_dict":
        content = {"state_dict": state}
    elif layout == "bare":
        content = state
    elif layout == "data-parallel":
        content = {"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        content = {"model_state_dict": {**state, **PDSNNetwork(TINY).sia.state_dict(prefix="sia.")}}
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    model, info = load_recognition_model(path)
    assert model.architecture.layers == TINY.layers and model.architecture.widths == TINY.widths
    torch.testing.assert_close(_forward(model), _forward(source), rtol=0, atol=0)
    assert info.data_parallel_prefix == (layout == "data-parallel")
    assert bool(info.ignored_keys) == (layout == "with-sia")
    assert len(info.sha256) == 64


def test_sia_keys_are_reported_when_ignored(tmp_path, caplog):
    path = tmp_path / "stage1.pth"
    save_checkpoint(path, PDSNNetwork(TINY))
    with caplog.at_level(logging.INFO, logger="pdsn.model.checkpoint"):
        _, info = load_recognition_model(path)
    assert "ignoring" in caplog.text and "sia" in caplog.text
    assert all(k.startswith("sia.") for k in info.ignored_keys) and len(info.ignored_keys) >= 4
    stage1, _ = load_pdsn_model(path)
    assert isinstance(stage1, PDSNNetwork)


def test_save_checkpoint_writes_the_reference_layout(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, randomized_model(), epoch=12)
    content = torch.load(path, weights_only=True)
    assert set(content) == {"epoch", "optim_state_dict", "model_state_dict"} and content["epoch"] == 12
    _, info = read_state_dict(path)
    assert info.epoch == 12 and info.layout == "nested:model_state_dict"


def test_infer_architecture_recognises_presets():
    assert infer_architecture(LResNetIR(LRESNET10E_IR).state_dict()) == LRESNET10E_IR
    custom = infer_architecture(LResNetIR(TINY).state_dict())
    assert custom.layers == TINY.layers and custom.widths == TINY.widths


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_recognition_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        load_recognition_model(tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_recognition_model(path)


def test_non_tensor_content_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_recognition_model(path)
    torch.save({"learning_rate": 0.1, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_recognition_model(path)


def test_mismatch_lists_missing_unexpected_and_misshapen_keys(tmp_path):
    state = randomized_model().state_dict()
    del state["layer2.1.bn2.weight"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    state["fc.2.bias"] = torch.zeros(511)
    path = tmp_path / "broken.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_recognition_model(path, TINY)
    text = str(error.value)
    assert "missing keys (1): layer2.1.bn2.weight" in text
    assert "unexpected keys (1): layer9.0.conv1.weight" in text
    assert "wrong shape: fc.2.bias is [511], expected [512]" in text
    assert error.value.missing == ["layer2.1.bn2.weight"]


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError, match="does not fit lresnet10e-ir"):
        load_recognition_model(tiny_checkpoint, LRESNET10E_IR)


def test_grayscale_models_are_refused(tmp_path):
    state = randomized_model().state_dict()
    state["conv1.weight"] = torch.zeros(8, 1, 3, 3)
    path = tmp_path / "gray.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="3-channel RGB"):
        load_recognition_model(path)
