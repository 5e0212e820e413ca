"""The TensorRT backend: which engine it runs, what it refuses, and (on a GPU) what it computes.

This machine has TensorRT-RTX (it builds engines without a GPU) but no GPU, so the tests here
run every check that comes before the GPU: engine selection, flavour/version/GPU mismatch,
profile limits, and the clear error when no GPU is present. What the backend does with an engine
(the I/O it reads from it and checks, the addresses it binds, the data path, ``direct_call``) runs
against stand-in TensorRT and CUDA modules (``fake_tensorrt``, ``fake_cuda``) whose engines compute
a known function of the memory bound to them. The GPU-marked tests need a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fake_cuda import install_fake_cuda
from fake_tensorrt import engine_plan, engine_tensor, install_fake_tensorrt
from gpu import has_gpu

from pdsn.engines.build import EngineBuildRequest, build_engine
from pdsn.kernels.fdm_pack import pack_dictionary, packed_words
from pdsn.model.bundle_format import BundleIntegrityError, ModelContract
from pdsn.model.manifest import Engine, read_manifest, write_manifest
from pdsn.model.sample_faces import occlusion_mix, seeded_faces
from pdsn.runtime import BackendUnavailableError, Recognizer
from pdsn.runtime.backends.base import PipelinedBackend
from pdsn.runtime.backends.engines import EngineMismatchError, check_engine, find_engine, named_engine
from pdsn.runtime.backends.tensorrt_backend import TensorRTBackend


def record(**changes) -> dict:
    base = {
        "file": "engines/e.engine",
        "flavour": "tensorrt-rtx",
        "version": "1.7.1.116",
        "precision": "fp16",
        "compute_capability": "portable",
        "profile": {"min": 1, "opt": 16, "max": 128},
        "variant": {"file": "model.fp16.onnx", "sha256": "0" * 64},
    }
    return {**base, **changes}


def entry(**changes) -> Engine:
    return Engine.from_record("e", record(**changes))


@pytest.mark.parametrize(
    ("changes", "version", "capability", "message"),
    [
        ({}, None, None, "needs tensorrt-rtx 1.7.1.116, which is not installed: `pip install"),
        ({}, "1.8.0.1", None, "built with tensorrt-rtx 1.7.1.116, but 1.8.0.1 is installed"),
        (
            {},
            "1.7.1.116",
            "9.0",
            "built for compute capability 8.0, 8.6, 8.9, 12.0 \\(portable\\), but this GPU is 9.0",
        ),
        ({"compute_capability": "sm75-sm86"}, "1.7.1.116", "8.9", "7.5, 8.6 \\(sm75-sm86\\)"),
        (
            {"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "sm90"},
            "10.13.0",
            "8.9",
            "compute capability 9.0 \\(sm90\\)",
        ),
        (
            {"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "ampere-plus"},
            "10.13.0",
            "7.5",
            "Ampere or newer",
        ),
    ],
)
def test_engines_this_machine_cannot_run_are_refused(changes, version, capability, message):
    with pytest.raises(BackendUnavailableError, match=message) as caught:
        check_engine(entry(**changes), version, capability)
    assert "pdsn build" in str(caught.value) or "pip install" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "version", "capability"),
    [
        ({}, "1.7.1.116", "8.6"),
        ({}, "1.7.1.116", "12.1"),
        ({"compute_capability": "sm75-sm86"}, "1.7.1.116", "7.5"),
        ({"flavour": "tensorrt", "version": "10.13.0", "compute_capability": "ampere-plus"}, "10.13.0", "9.0"),
        ({"flavour": "tensorrt", "version": "10.8.0", "version_compatible": True}, "10.13.0", None),
    ],
)
def test_engines_this_machine_can_run_pass(changes, version, capability):
    check_engine(entry(**changes), version, capability)


def test_a_missing_engine_says_how_to_build_it():
    manifest = engines(("e", record(precision="fp32")))
    assert find_engine(manifest, "tensorrt-rtx", "fp32").precision == "fp32"
    with pytest.raises(ValueError, match="no tensorrt-rtx engine for int8 .*tensorrt-rtx/fp32.*pdsn build"):
        find_engine(manifest, "tensorrt-rtx", "int8")


@pytest.fixture(scope="module")
def engine_bundle(tiny_bundle, tmp_path_factory) -> Path:
    pytest.importorskip("tensorrt_rtx_bindings")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("trt") / "bundle"))
    build_engine(EngineBuildRequest(bundle, "fp32", flavour="tensorrt-rtx", batch=(1, 8, 16), progress=None))
    return bundle


@pytest.mark.skipif(has_gpu(), reason="checks the no-GPU path")
def test_no_gpu_is_a_clear_error(engine_bundle):
    with pytest.raises(BackendUnavailableError, match="no usable NVIDIA GPU here|needs cuda-python"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16)


def test_engine_selection_and_its_limits(engine_bundle, tmp_path):
    with pytest.raises(ValueError, match="runs on device='cuda', not 'cpu'"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cpu", precision="fp32", max_batch=16)
    with pytest.raises(ValueError, match="max_batch 64 exceeds the engine's profile \\(batch 1..16\\)"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32")
    with pytest.raises(ValueError, match="precision 'fp16' is not in bundle"):
        Recognizer.open(engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp16")
    with pytest.raises(ValueError, match="no tensorrt engine of a gated variant"):
        Recognizer.open(engine_bundle, backend="tensorrt", device="cuda")
    other = Path(shutil.copytree(engine_bundle, tmp_path / "other"))
    manifest = read_manifest(other).document()
    for built in manifest["engines"].values():
        built["version"] = "0.9.0"
    write_manifest(other, manifest)
    with pytest.raises(EngineMismatchError, match="built with tensorrt-rtx 0.9.0, but .* is installed"):
        Recognizer.open(other, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16)


@pytest.mark.gpu
def test_engine_matches_onnx_runtime_on_a_gpu(engine_bundle):
    if not has_gpu():
        pytest.skip("needs an NVIDIA GPU")
    faces, masks = seeded_faces(11, seed=3), occlusion_mix(11, seed=3)
    with Recognizer.open(engine_bundle, precision="fp32") as reference:
        expected = reference.embed(faces, masks)
    with Recognizer.open(
        engine_bundle, backend="tensorrt-rtx", device="cuda", precision="fp32", max_batch=16
    ) as recognizer:
        for _ in range(3):  # graphs are captured on the first call per bucket, replayed after
            got = recognizer.embed(faces, masks)
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
        assert recognizer.backend_info["buckets"] == [1, 2, 4, 8, 16]


# --- engine selection --------------------------------------------------------------------------


def built_at(name: str, built: str | None = None, **changes) -> tuple[str, dict]:
    recorded = {"built": built} if built else {}
    return name, record(file=f"engines/{name}.engine", **recorded, **changes)


def engines(*entries: tuple[str, dict]) -> SimpleNamespace:
    """A stand-in manifest holding only these engines (all that engine selection reads)."""
    return SimpleNamespace(engines={key: Engine.from_record(key, found) for key, found in entries})


def test_an_engine_is_picked_by_its_manifest_key_or_file_name():
    manifest = engines(built_at("a"), built_at("b", "2026-01-02T00:00:00+00:00"))
    for name in ("a", "engines/a.engine", "a.engine"):
        assert find_engine(manifest, "tensorrt-rtx", "fp16", name).file == "engines/a.engine"
    with pytest.raises(ValueError, match="no engine 'c'; it has a, b"):
        find_engine(manifest, "tensorrt-rtx", "fp16", "c")
    with pytest.raises(ValueError, match="'a' is a tensorrt-rtx fp16 engine, but a tensorrt-rtx fp32 one"):
        find_engine(manifest, "tensorrt-rtx", "fp32", "a")
    assert named_engine(manifest, "b.engine").built.startswith("2026-01-02")


def test_without_a_name_the_newest_build_is_picked_whatever_the_manifest_order():
    built = [
        built_at("newest", "2026-03-01T12:00:00.000001+00:00"),
        built_at("legacy"),
        built_at("older", "2026-03-01T12:00:00+00:00"),
        built_at("other-precision", "2027-01-01T00:00:00+00:00", precision="fp32"),
    ]
    for order in (built, built[::-1]):
        assert find_engine(engines(*order), "tensorrt-rtx", "fp16").file == "engines/newest.engine"


def test_entries_without_a_build_time_count_as_oldest_and_ties_go_by_file_name():
    legacy = engines(built_at("b-legacy"), built_at("a-legacy"))
    assert find_engine(legacy, "tensorrt-rtx", "fp16").file == "engines/b-legacy.engine"
    mixed = engines(built_at("z-legacy"), built_at("a-built", "2025-01-01T00:00:00+00:00"))
    assert find_engine(mixed, "tensorrt-rtx", "fp16").file == "engines/a-built.engine"
    damaged = engines(built_at("x", "yesterday"))
    with pytest.raises(ValueError, match="built='yesterday', not an ISO 8601 time"):
        find_engine(damaged, "tensorrt-rtx", "fp16")


# --- the backend on stand-in TensorRT and CUDA -------------------------------------------------

CONTRACT = ModelContract(feature_shape=(4, 7, 6), embedding_size=8)
PROFILE = (1, 4, 8)
WORDS = packed_words(4 * 7 * 6)


def tensors(**changes: dict | None) -> list[dict]:
    """The I/O of an engine built from a bundle with ``CONTRACT``; a change replaces or (None) drops one."""
    io = {
        "image": engine_tensor("image", "UINT8", [-1, 112, 96, 3], PROFILE),
        "occlusion": engine_tensor("occlusion", "FLOAT", [-1, 25], PROFILE),
        "fdm_dictionary": engine_tensor("fdm_dictionary", "FLOAT", [25, 4, 7, 6]),
        "embedding": engine_tensor("embedding", "FLOAT", [-1, 8], output=True),
    }
    io.update(changes)
    return [t for t in io.values() if t is not None]


PLUGIN_IO = {
    "fdm_dictionary": None,
    "fdm_dictionary_packed": engine_tensor("fdm_dictionary_packed", "INT32", [25, WORDS]),
}


@pytest.fixture
def stand_ins(monkeypatch):
    """(tensorrt, cuda runtime) stand-ins, the engine's runs queued on the fake CUDA streams."""
    cudart = install_fake_cuda(monkeypatch)
    return install_fake_tensorrt(monkeypatch, stream_work=cudart.enqueue), cudart


@pytest.fixture
def dictionary() -> np.ndarray:
    return (np.random.default_rng(0).random((25, 4, 7, 6)) < 0.75).astype(np.float32)


def open_engine(
    tmp_path, dictionary, io, refuse_address=(), fdm_impl="native", contract=CONTRACT, **options
) -> TensorRTBackend:
    path = tmp_path / "e.engine"
    path.write_bytes(engine_plan(io, refuse_address))
    recorded = entry(
        flavour="tensorrt",
        version="10.13.0.35",
        compute_capability="sm90",
        fdm_impl=fdm_impl,
        profile={"min": PROFILE[0], "opt": PROFILE[1], "max": PROFILE[2]},
    )
    return TensorRTBackend(str(path), dictionary, contract, engine=recorded, **options)


def batch(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 112, 96, 3), dtype=np.uint8)
    return images, (rng.random((count, 25)) < 0.3).astype(np.float32)


def expected(images: np.ndarray, occlusion: np.ndarray, dictionary: np.ndarray) -> np.ndarray:
    """What the stand-in engine computes: each row's input sums, then the dictionary's kept elements."""
    rows = np.zeros((len(images), 8), np.float32)
    rows[:, 0] = images.reshape(len(images), -1).sum(axis=1)
    rows[:, 1] = occlusion.sum(axis=1)
    rows[:, 2] = dictionary.sum()
    return rows


def test_buffers_are_sized_from_the_engine_and_every_address_is_bound(stand_ins, tmp_path, dictionary):
    trt, cudart = stand_ins
    backend = open_engine(tmp_path, dictionary, tensors())
    assert isinstance(backend, PipelinedBackend) and backend.pipelined
    assert (backend.min_batch, backend.max_batch, backend.preferred_batch_sizes) == (1, 8, (1, 2, 4, 8))
    (engine,) = trt.Runtime.engines
    slots = engine.contexts
    assert len(slots) == 2
    sizes = {
        "image": 8 * 112 * 96 * 3,
        "occlusion": 8 * 25 * 4,
        "embedding": 8 * 8 * 4,
        "fdm_dictionary": dictionary.nbytes,
    }
    for context in slots:
        assert context.addresses.keys() == sizes.keys()
        assert {name: len(cudart.memory[address]) for name, address in context.addresses.items()} == sizes
    assert slots[0].addresses["fdm_dictionary"] == slots[1].addresses["fdm_dictionary"], "uploaded once"
    assert slots[0].addresses["image"] != slots[1].addresses["image"]
    assert bytes(cudart.memory[slots[0].addresses["fdm_dictionary"]]) == dictionary.tobytes()
    backend.close()
    assert cudart.memory == {}, "close releases every buffer"


@pytest.mark.parametrize("graphs", [False, True])
def test_batches_run_through_the_bound_memory(stand_ins, tmp_path, dictionary, graphs):
    _, cudart = stand_ins
    backend = open_engine(tmp_path, dictionary, tensors(), cuda_graphs=graphs)
    for seed, count in enumerate((3, 3, 8, 1, 3)):  # slot 0 runs bucket 4 twice: its graph replays
        images, occlusion = batch(count, seed)
        np.testing.assert_array_equal(backend.infer(images, occlusion), expected(images, occlusion, dictionary))
    assert (cudart.launches > 0) == graphs
    with pytest.raises(ValueError, match="a batch of 9 is outside the engine's profile 1..8"):
        backend.infer(*batch(9))
    backend.close()


def test_a_bucket_whose_capture_fails_runs_without_a_graph(monkeypatch, tmp_path, dictionary, caplog):
    cudart = install_fake_cuda(monkeypatch, capture=False)
    install_fake_tensorrt(monkeypatch, stream_work=cudart.enqueue)
    backend = open_engine(tmp_path, dictionary, tensors())
    for seed in range(3):
        images, occlusion = batch(3, seed)
        np.testing.assert_array_equal(backend.infer(images, occlusion), expected(images, occlusion, dictionary))
    assert "CUDA graph capture failed for batch 4" in caplog.text and cudart.launches == 0
    backend.close()


def test_a_plugin_engine_gets_the_packed_dictionary(stand_ins, tmp_path, dictionary):
    trt, cudart = stand_ins
    backend = open_engine(tmp_path, dictionary, tensors(**PLUGIN_IO), fdm_impl="plugin")
    address = trt.Runtime.engines[0].contexts[0].addresses["fdm_dictionary_packed"]
    assert bytes(cudart.memory[address]) == pack_dictionary(dictionary).tobytes()
    images, occlusion = batch(5)
    np.testing.assert_array_equal(backend.infer(images, occlusion), expected(images, occlusion, dictionary))
    assert backend.describe()["fdm_impl"] == "plugin"
    assert not trt.plugin.registered, "the engine carries the plugin's kernel; nothing is registered to run it"
    backend.close()


def test_float_images_and_an_embedded_dictionary_bind_what_that_engine_has(stand_ins, tmp_path, dictionary):
    trt, cudart = stand_ins
    contract = ModelContract(
        image_layout="nchw-float32", feature_shape=(4, 7, 6), embedding_size=8, dictionary_binding="embedded"
    )
    io = tensors(image=engine_tensor("image", "FLOAT", [-1, 3, 112, 96], PROFILE), fdm_dictionary=None)
    backend = open_engine(tmp_path, dictionary, io, contract=contract)
    addresses = trt.Runtime.engines[0].contexts[0].addresses
    assert addresses.keys() == {"image", "occlusion", "embedding"}
    assert len(cudart.memory[addresses["image"]]) == 8 * 3 * 112 * 96 * 4
    images, occlusion = (
        np.random.default_rng(1).random((2, 3, 112, 96), dtype=np.float32),
        np.zeros((2, 25), np.float32),
    )
    got = backend.infer(images, occlusion)
    np.testing.assert_allclose(got[:, 0], images.reshape(2, -1).sum(axis=1), rtol=1e-6)
    assert (got[:, 1:] == 0).all(), "no occluded cells, no dictionary input"
    backend.close()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"image": engine_tensor("images", "UINT8", [-1, 112, 96, 3], PROFILE)}, "input 'images' is not in the"),
        ({"image": engine_tensor("image", "FLOAT", [-1, 112, 96, 3], PROFILE)}, "'image' is float32, .* says uint8"),
        (
            {"embedding": engine_tensor("embedding", "FLOAT", [-1, 16], output=True)},
            "'embedding' has shape \\(N, 16\\)",
        ),
        ({"fdm_dictionary": None}, "input 'fdm_dictionary' is missing"),
        (
            {**PLUGIN_IO, "fdm_dictionary_packed": engine_tensor("fdm_dictionary_packed", "INT32", [25, 7])},
            "'fdm_dictionary_packed' has shape \\(25, 7\\)",
        ),
    ],
    ids=["name", "dtype", "width", "missing", "packed-width"],
)
def test_engine_io_that_breaks_the_contract_is_refused_naming_the_tensor(
    stand_ins, tmp_path, dictionary, changes, problem
):
    _, cudart = stand_ins
    with pytest.raises(BundleIntegrityError, match=f"(?s)engine engines/e.engine does not match .*{problem}"):
        open_engine(tmp_path, dictionary, tensors(**changes))
    assert cudart.memory == {}


def test_a_refused_address_is_an_error_naming_the_tensor(stand_ins, tmp_path, dictionary):
    _, cudart = stand_ins
    with pytest.raises(RuntimeError, match="address .* for tensor 'embedding' \\(set_tensor_address returned False"):
        open_engine(tmp_path, dictionary, tensors(), refuse_address=("embedding",))
    assert cudart.memory == {}, "what was allocated before the refusal is released"


def test_an_engine_that_disagrees_with_its_manifest_entry_or_the_dictionary_is_refused(stand_ins, tmp_path, dictionary):
    other_profile = {
        n: engine_tensor(n, t, s, (1, 8, 16))
        for n, t, s in [("image", "UINT8", [-1, 112, 96, 3]), ("occlusion", "FLOAT", [-1, 25])]
    }
    with pytest.raises(BundleIntegrityError, match="profile has batch 1..16, but its manifest entry records 1..8"):
        open_engine(tmp_path, dictionary, tensors(**other_profile))
    with pytest.raises(BundleIntegrityError, match="numpy cannot hold"):
        open_engine(tmp_path, dictionary, tensors(embedding=engine_tensor("embedding", "BF16", [-1, 8], output=True)))
    with pytest.raises(
        BundleIntegrityError, match="takes 'fdm_dictionary' shaped \\(25, 4, 7, 6\\), but .* \\(25, 4, 7, 5\\)"
    ):
        open_engine(tmp_path, dictionary[..., :5], tensors())
    (tmp_path / "e.engine").write_bytes(b"not a plan")
    with pytest.raises(BackendUnavailableError, match="could not load engine e.engine"):
        TensorRTBackend(
            str(tmp_path / "e.engine"),
            dictionary,
            CONTRACT,
            engine=entry(flavour="tensorrt", version="10.13.0.35", compute_capability="sm90"),
        )


def test_direct_call_is_the_engines_own_enqueue_outside_the_slots(stand_ins, tmp_path, dictionary):
    trt, cudart = stand_ins
    backend = open_engine(tmp_path, dictionary, tensors())
    images, occlusion = batch(3)
    call = backend.direct_call(images, occlusion)
    engine = trt.Runtime.engines[0]
    slots, direct = engine.contexts[:2], engine.contexts[2]
    assert direct.shapes == {"image": (3, 112, 96, 3), "occlusion": (3, 25)}, "shaped for this batch, not a bucket"
    for _ in range(2):
        np.testing.assert_array_equal(call(), expected(images, occlusion, dictionary))
    assert direct.executions == 2 and [s.executions for s in slots] == [0, 0] and cudart.launches == 0
    assert direct.addresses["fdm_dictionary"] == slots[0].addresses["fdm_dictionary"]
    backend.close()
    assert cudart.memory == {}
