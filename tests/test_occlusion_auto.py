"""occlusion="auto": the bundle's estimator finds the cells wherever occlusion is accepted."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pdsn.cli import main
from pdsn.model.bundle_format import BundleIntegrityError
from pdsn.model.manifest import read_manifest, write_manifest
from pdsn.runtime import Recognizer
from pdsn.runtime.gallery import Gallery
from pdsn.train.occlusion import occlude
from pdsn.train.synthetic import SyntheticFaces


@pytest.fixture(scope="module")
def estimator_bundle(tiny_bundle, tmp_path_factory):
    from pdsn.export.estimator_bundle import add_estimator

    bundle = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("auto") / "b")
    entry = add_estimator(bundle)
    assert (
        entry["parity"]["passed"]
        and read_manifest(bundle).document()["estimator"]["file"] in read_manifest(bundle).document()["files"]
    )
    return bundle


@pytest.fixture(scope="module")
def faces():
    images, _ = SyntheticFaces(3, 2, seed=12).generate()
    scarf = occlude(images[1], "scarf", np.random.default_rng(4)).image
    return images, scarf


def test_every_entry_point_uses_the_estimated_cells(estimator_bundle, faces, tmp_path):
    images, scarf = faces
    with Recognizer.open(estimator_bundle, backend="onnxruntime") as rec:
        cells = rec.estimate_occlusion(scarf)
        assert cells.shape == (1, 25) and cells[0, 20:].sum() >= 3  # the scarf covers the bottom row
        assert np.allclose(rec.embed(scarf, occlusion="auto"), rec.embed(scarf, occlusion=cells))
        embedded, used = rec.embed(scarf, occlusion="auto", return_cells=True)
        assert np.array_equal(used, cells) and np.allclose(embedded, rec.embed(scarf, occlusion=cells))
        with pytest.raises(TypeError, match="return_cells"):
            rec.embed(scarf, return_cells="yes")
        assert np.allclose(rec.submit(scarf, occlusion="auto").result(), rec.embed(scarf, occlusion=cells)[0])
        clean = rec.estimate_occlusion(images[0])
        result = rec.verify(images[0], scarf, occlusion_a="auto", occlusion_b="auto")
        expected = sorted(set(np.flatnonzero(cells[0])) | set(np.flatnonzero(clean[0])))
        assert result.occluded_cells == [int(c) for c in expected]
        with Gallery.open(tmp_path / "g.db", rec) as gallery:
            gallery.enroll("a", images[0], occlusion="auto")
            gallery.enroll("b", images[2])
            found = gallery.identify(scarf, occlusion="auto", k=2)
            assert found.occluded_cells == [int(c) for c in np.flatnonzero(cells[0])]


def test_without_an_estimator_auto_names_the_command(tiny_bundle, faces):
    with Recognizer.open(tiny_bundle, backend="onnxruntime") as rec, pytest.raises(ValueError, match="add-estimator"):
        rec.embed(faces[1], occlusion="auto")


def test_an_estimator_for_another_model_or_bad_thresholds_is_refused(estimator_bundle, faces, tmp_path):
    for change, error in (
        (lambda m: m["estimator"]["contract"]["grid"].update(rows=4), BundleIntegrityError),
        (lambda m: m["estimator"]["contract"]["thresholds"].__setitem__(3, 1.5), ValueError),
    ):
        bundle = shutil.copytree(estimator_bundle, tmp_path / f"b{len(list(tmp_path.iterdir()))}")
        manifest = read_manifest(bundle).document()
        change(manifest)
        write_manifest(bundle, manifest)
        with Recognizer.open(bundle, backend="onnxruntime") as rec, pytest.raises(error):
            rec.embed(faces[1], occlusion="auto")


def test_cli_add_estimator_and_auto(tiny_bundle, tmp_path, capsys, faces):
    from PIL import Image

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert main(["add-estimator", "--bundle", str(bundle)]) == 0
    assert "occlusion='auto' now works" in capsys.readouterr().out
    Image.fromarray(faces[1]).save(tmp_path / "scarf.png")
    assert main(["embed", "--bundle", str(bundle), str(tmp_path / "scarf.png"), "--occlusion", "auto"]) == 0
    assert (
        main(
            [
                "compare",
                "--bundle",
                str(bundle),
                str(tmp_path / "scarf.png"),
                str(tmp_path / "scarf.png"),
                "--occlusion-a",
                "auto",
            ]
        )
        == 0
    )
    assert "masked cells" in capsys.readouterr().out


def test_float_input_bundles_get_no_estimator(tiny_float_bundle, tmp_path):
    from pdsn.export.estimator_bundle import add_estimator

    bundle = shutil.copytree(tiny_float_bundle, tmp_path / "f")
    with pytest.raises(ValueError, match="uint8"):
        add_estimator(bundle)


def test_the_service_resolves_auto_on_every_face_route(estimator_bundle, faces, tmp_path):
    import httpx
    from serve_harness import ServerProcess, b64

    images, scarf = faces
    with Recognizer.open(estimator_bundle, backend="onnxruntime", precision="fp32") as rec:
        cells = [int(c) for c in np.flatnonzero(rec.estimate_occlusion(scarf)[0])]
    options = ("--backend", "onnxruntime", "--precision", "fp32", "--gallery", str(tmp_path / "g.db"))
    with (
        ServerProcess(estimator_bundle, tmp_path / "server.log", *options) as server,
        httpx.Client(base_url=server.url, timeout=30.0) as client,
    ):
        embedded = client.post("/v1/embed", json={"images": [b64(scarf)], "occlusion": "auto"})
        assert embedded.status_code == 200 and embedded.json()["occluded_cells"] == [cells]
        verified = client.post(
            "/v1/verify", json={"image_a": b64(images[0]), "image_b": b64(scarf), "occlusion_b": "auto"}
        )
        assert verified.status_code == 200 and set(cells) <= set(verified.json()["occluded_cells"])
        enrolled = client.post(
            "/v1/identities", json={"identity": "a", "images": [b64(images[0])], "occlusion": "auto"}
        )
        assert enrolled.status_code == 201
        found = client.post("/v1/identify", json={"image": b64(scarf), "occlusion": "auto", "k": 1})
        assert found.status_code == 200 and found.json()["occluded_cells"] == cells


def test_the_estimator_runs_on_the_models_backend_and_agrees(estimator_bundle, faces):
    images, scarf = faces
    batch = np.stack([images[0], scarf])
    cells = {}
    for backend in ("onnxruntime", "openvino"):
        with Recognizer.open(estimator_bundle, backend=backend, precision="fp32") as rec:
            cells[backend] = rec.estimate_occlusion(batch)
            assert rec.backend_info["occlusion_estimator"]["backend"] == backend
    assert np.array_equal(cells["onnxruntime"], cells["openvino"])


def test_the_bundle_carries_the_estimators_evaluation_report(estimator_bundle):
    import json

    from pdsn.model.bundle_format import sha256_file
    from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR

    entry = read_manifest(estimator_bundle).document()["estimator"]
    evaluation = entry["evaluation"]
    assert {evaluation["report"], evaluation["markdown"]} <= set(read_manifest(estimator_bundle).document()["files"])
    report = json.loads((estimator_bundle / evaluation["report"]).read_text())
    assert report["estimator_sha256"] == sha256_file(SHIPPED_ESTIMATOR)
    assert evaluation["goals_met"] and set(evaluation["goals"]) == set(report["goals"])
    assert "Verification" in (estimator_bundle / evaluation["markdown"]).read_text()


def test_an_evaluation_of_other_weights_or_a_missing_one_is_refused(tiny_bundle, tmp_path):
    import json

    from pdsn.export.estimator_bundle import add_estimator, evaluation_beside
    from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    other = json.loads(evaluation_beside(SHIPPED_ESTIMATOR).read_text())
    other["estimator_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not a report of"):
        add_estimator(bundle, SHIPPED_ESTIMATOR, tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="evaluate-occlusion"):
        add_estimator(bundle, SHIPPED_ESTIMATOR, tmp_path / "missing.json")
    assert "estimator" not in read_manifest(bundle).document()


def test_verify_judges_the_estimator_on_every_cpu_backend(estimator_bundle):
    from pdsn.model.estimator_parity import judge_estimator
    from pdsn.verify import format_verification, verify_bundle

    result = verify_bundle(estimator_bundle, holdout=2)
    assert set(result["estimator"]) == {"estimator on onnxruntime", "estimator on openvino"}
    assert result["passed"] and all(row["passed"] for row in result["estimator"].values())
    assert "estimator on openvino" in format_verification(result)
    reference = np.full((2, 25), 0.2)
    thresholds = np.full(25, 0.5, np.float32)
    off = reference.copy()
    off[1, 3] = 0.9
    judged = judge_estimator(reference, off, thresholds, "a broken estimator")
    assert not judged["passed"] and judged["cells_differing"] == 1 and len(judged["failures"]) == 2
