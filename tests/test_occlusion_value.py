"""``Occlusion``, the one value for a face's occluded cells, checked where it is made and trusted after: its
encodings, its union, the boundaries that make it, and one identify request that checks its image and its
cells once each."""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np
import pytest
from serve_harness import b64

from pdsn.errors import InputError, InputTypeError
from pdsn.model.grid import SCARF_CELLS, SUNGLASSES_CELLS, cells_to_vector
from pdsn.model.occlusion import NO_OCCLUSION, Occlusion, as_vectors, from_checked_vectors
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime.futures import joined, then
from pdsn.runtime.inputs import prepare_occlusion


def test_cells_vectors_and_bits_are_one_value():
    glasses = Occlusion.from_cells(SUNGLASSES_CELLS)
    assert glasses.cells == (10, 11, 12, 13) and glasses.bits == sum(1 << c for c in SUNGLASSES_CELLS)
    assert np.array_equal(glasses.vector, cells_to_vector(SUNGLASSES_CELLS))
    assert Occlusion.from_vector(glasses.vector) == glasses == Occlusion.from_bits(glasses.bits)
    assert Occlusion.from_cells({13, 10, 12, 11}) == glasses  # order does not matter
    assert NO_OCCLUSION.cells == () and not NO_OCCLUSION.occluded and glasses.occluded
    assert repr(glasses) == "Occlusion(cells=[10, 11, 12, 13])"


def test_union_and_cover_follow_the_cells():
    glasses, scarf = Occlusion.from_cells(SUNGLASSES_CELLS), Occlusion.from_cells(SCARF_CELLS)
    both = glasses | scarf
    assert both.cells == tuple(sorted(SUNGLASSES_CELLS + SCARF_CELLS))
    assert both.covers(glasses) and both.covers(scarf) and both.covers(NO_OCCLUSION)
    assert not glasses.covers(scarf) and not glasses.covers(both)
    assert glasses | NO_OCCLUSION == glasses


def test_vectors_round_trip_in_bulk():
    rng = np.random.default_rng(3)
    vectors = (rng.random((50, 25)) < 0.3).astype(np.float32)
    occlusions = from_checked_vectors(vectors)
    assert len(occlusions) == 50 and np.array_equal(as_vectors(occlusions), vectors)
    assert as_vectors(()).shape == (0, 25)


@pytest.mark.parametrize(
    ("make", "kind", "field"),
    [
        (lambda: Occlusion.from_cells([3, 25], "occlusion"), InputError, "occlusion[1]"),
        (lambda: Occlusion.from_cells([3, True], "cells"), InputTypeError, "cells[1]"),
        (lambda: Occlusion.from_cells([4, 4], "occlusion_a"), InputError, "occlusion_a"),
        (lambda: Occlusion.from_cells("12", "cells"), InputTypeError, "cells"),
        (lambda: Occlusion.from_vector(np.full(25, 0.5)), InputError, "occlusion"),
        (lambda: Occlusion.from_vector(np.zeros((2, 25))), InputError, "occlusion"),
        (lambda: Occlusion.from_vector(np.zeros(24)), InputError, "occlusion"),
        (lambda: Occlusion.from_bits(-1), InputError, "occlusion"),
        (lambda: Occlusion.from_bits(1 << 25), InputError, "occlusion"),
        (lambda: Occlusion.from_bits(True), InputError, "occlusion"),
    ],
)
def test_a_bad_occlusion_is_an_input_error_naming_its_field(make, kind, field):
    with pytest.raises(kind) as caught:
        make()
    assert caught.value.field == field


def test_made_values_pass_the_runtime_boundary_unchecked(monkeypatch):
    glasses = Occlusion.from_cells(SUNGLASSES_CELLS)

    def refuse(*args, **kwargs):
        raise AssertionError("an Occlusion was checked again")

    monkeypatch.setattr("pdsn.model.occlusion.validate_cell_ids", refuse)
    monkeypatch.setattr("pdsn.runtime.inputs.validate_occlusion_vectors", refuse)
    assert prepare_occlusion(glasses, 3) == (glasses,) * 3
    assert prepare_occlusion([glasses, NO_OCCLUSION], 2) == (glasses, NO_OCCLUSION)
    assert prepare_occlusion(None, 2) == (NO_OCCLUSION, NO_OCCLUSION)
    with pytest.raises(InputError, match="2 occlusions for 3 images"):
        prepare_occlusion([glasses, NO_OCCLUSION], 3)


def test_callers_forms_become_values():
    assert prepare_occlusion([10, 11, 12, 13], 2) == (Occlusion.from_cells(SUNGLASSES_CELLS),) * 2
    assert prepare_occlusion([[1], []], 2) == (Occlusion.from_cells([1]), NO_OCCLUSION)
    assert prepare_occlusion(cells_to_vector(SCARF_CELLS), 1) == (Occlusion.from_cells(SCARF_CELLS),)
    with pytest.raises(InputError) as caught:
        prepare_occlusion([[1], [30]], 2)
    assert caught.value.field == "occlusion[1][0]"


def test_joined_parts_resolve_in_order_and_fail_or_cancel_together():
    first, second = Future(), Future()
    whole = joined([first, second])
    second.set_result(np.ones((2, 3)))
    assert not whole.done()
    first.set_result(np.zeros((1, 3)))
    assert whole.result().tolist() == [[0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert then(whole, len).result() == 3

    first, second = Future(), Future()
    whole = joined([first, second])
    first.set_exception(InputError("images", "bad"))
    assert isinstance(whole.exception(), InputError)
    second.set_result(np.zeros((1, 3)))  # a later part changes nothing
    assert isinstance(whole.exception(), InputError)

    first, second = Future(), Future()
    whole = then(joined([first, second]), len)
    whole.cancel()
    assert first.cancelled() and second.cancelled()


def test_one_identify_request_checks_its_image_and_cells_once(tiny_bundle, tmp_path, monkeypatch):
    """The route's boundary checks the request; the runtime and the gallery trust what it made."""
    from starlette.testclient import TestClient

    import pdsn.model.occlusion as occlusion_module
    import pdsn.runtime.inputs as inputs_module
    from pdsn.serve.app import create_app
    from pdsn.serve.config import ServeConfig

    calls = {"image": 0, "cells": 0}

    def counted(module, name, key):
        original = getattr(module, name)

        def count(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, count)

    config = ServeConfig(bundle=tiny_bundle, gallery=str(tmp_path / "g.db"), backend="onnxruntime", precision="fp32")
    faces = seeded_faces(2)
    with TestClient(create_app(config), base_url="http://localhost") as client:
        for _ in range(300):
            if client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert client.post("/v1/identities", json={"identity": "a", "images": [b64(faces[0])]}).status_code == 201
        counted(inputs_module, "_check_image", "image")
        counted(occlusion_module, "validate_cell_ids", "cells")
        answer = client.post("/v1/identify", json={"image": b64(faces[1]), "occlusion": [10, 11, 12, 13], "k": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["occluded_cells"] == [10, 11, 12, 13]
    assert calls == {"image": 1, "cells": 1}
