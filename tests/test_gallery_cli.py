"""`pdsn gallery enroll|identify|list|remove` on a folder of identity folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pdsn.cli import main
from pdsn.train.occlusion import occlude
from pdsn.train.synthetic import SyntheticFaces


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    images, _ = SyntheticFaces(4, 3, seed=8).generate()
    for i in range(4):
        folder = root / "enroll" / f"person-{i}"
        folder.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(images[3 * i + j]).save(folder / f"{j}.png")
    probe = occlude(images[3 * 2 + 2], "sunglasses", np.random.default_rng(1))
    Image.fromarray(probe.image).save(root / "probe.png")
    return root, [int(c) for c in np.flatnonzero(probe.cells)]


def test_enroll_identify_list_remove(people, tiny_bundle, tmp_path, capsys):
    root, cells = people
    common = ["--bundle", str(tiny_bundle), "--gallery", str(tmp_path / "g.db")]
    assert main(["gallery", "enroll", *common, str(root / "enroll")]) == 0
    assert "enrolled 4 identities (8 faces)" in capsys.readouterr().out
    occlusion = ",".join(map(str, cells))
    assert main(["gallery", "identify", *common, str(root / "probe.png"), "--occlusion", occlusion, "-k", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["occluded_cells"] == cells and len(answer["matches"]) == 2
    assert answer["matches"][0]["occluded_cells"] == cells
    assert main(["gallery", "remove", *common, "person-0"]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", *common]) == 0
    assert capsys.readouterr().out.split() == ["person-1", "person-2", "person-3"]
    assert main(["gallery", "enroll", *common, str(root / "enroll")]) == 2
    assert "already enrolled" in capsys.readouterr().err
    assert main(["gallery", "remove", *common, "nobody"]) == 2
    assert "'nobody' is not enrolled" in capsys.readouterr().err


def test_enroll_refuses_a_folder_without_identities(tiny_bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["gallery", "enroll", "--bundle", str(tiny_bundle), "--gallery", str(tmp_path / "g.db")]
    assert main([*args, str(tmp_path / "empty")]) == 2
    assert "no identity sub-folders with images" in capsys.readouterr().err


def _damage(gallery_file, face_id: int) -> None:
    import sqlite3

    with sqlite3.connect(gallery_file) as db:
        blob = bytearray(db.execute("SELECT base FROM faces WHERE id = ?", (face_id,)).fetchone()[0])
        blob[4] ^= 0xFF
        db.execute("UPDATE faces SET base = ? WHERE id = ?", (bytes(blob), face_id))


def test_a_damaged_face_is_checked_served_around_and_repaired(people, tiny_bundle, tmp_path, capsys):
    import httpx
    from serve_harness import ServerProcess

    root, _ = people
    gallery_file = tmp_path / "g.db"
    common = ["--bundle", str(tiny_bundle), "--gallery", str(gallery_file)]
    assert main(["gallery", "enroll", *common, str(root / "enroll")]) == 0
    _damage(gallery_file, 2)
    capsys.readouterr()
    assert main(["gallery", "check", *common]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"face_id": 2, "identity": "person-0", "damage": "checksum mismatch"}
    assert "1 damaged face(s), left out of searches" in lines[1]
    with ServerProcess(tiny_bundle, tmp_path / "server.log", "--gallery", str(gallery_file)) as server:
        ready = httpx.get(f"{server.url}/v2/health/ready").json()
        assert ready == {"ready": True, "gallery_damaged_faces": 1}
        assert "pdsn_gallery_damaged_faces 1.0" in httpx.get(f"{server.url}/metrics").text
    assert main(["gallery", "check", *common, "--repair"]) == 0
    assert "removed 1 damaged face(s)" in capsys.readouterr().out
    assert main(["gallery", "check", *common]) == 0
    assert "7 faces, none damaged" in capsys.readouterr().out
