"""`pdsn gallery migrate`: a gallery copied between a SQLite file and PostgreSQL, scores unchanged, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from pdsn.cli import main
from pdsn.runtime import Recognizer
from pdsn.runtime.gallery import Enrollment, Gallery, GalleryError
from pdsn.runtime.gallery import migrate as migration
from pdsn.runtime.gallery.migrate import migrate_gallery

PEOPLE = 9


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    out = tmp_path_factory.mktemp("migrate") / "demo"
    export_bundle(ExportRequest(out=out, weights="demo", parity_faces=2))
    with Recognizer.open(out, backend="onnxruntime", precision="fp32", max_delay_ms=0.0) as rec:
        yield rec


@pytest.fixture(scope="module")
def features(recognizer):
    width = recognizer.folded_head.feature_size
    return np.abs(np.random.default_rng(11).standard_normal((PEOPLE * 2, width))).astype(np.float32)


def _enrolled(location, recognizer, features) -> None:
    with Gallery.open(location, recognizer, create=True) as gallery:
        gallery.enroll_batch(
            [
                Enrollment(f"person-{i}", features[2 * i : 2 * i + 2], [None, [20, 21, 22, 23, 24]], {"badge": i})
                for i in range(PEOPLE)
            ]
        )


def _answers(location, recognizer, probes) -> list:
    with Gallery.open(location, recognizer, create=False) as gallery:
        found = gallery.identify_features(probes, occlusion=[10, 11, 12, 13], k=3)
        return [[(m.identity, round(m.score, 6)) for m in result.matches] for result in found]


def test_a_copy_each_way_answers_as_the_original(recognizer, features, postgres, tmp_path, capsys):
    source, database, back = tmp_path / "g.db", postgres.database(), tmp_path / "back.db"
    _enrolled(source, recognizer, features)
    assert main(["gallery", "migrate", str(source), database]) == 0
    assert (
        f"{PEOPLE} identities, {2 * PEOPLE} faces ({PEOPLE} identities copied by this run)" in capsys.readouterr().out
    )
    migrate_gallery(database, back)
    probes = features[1::2] * 1.01
    expected = _answers(source, recognizer, probes)
    assert _answers(database, recognizer, probes) == expected
    assert _answers(back, recognizer, probes) == expected
    with Gallery.open(back, recognizer, create=False) as gallery:
        assert gallery.metadata("person-3") == {"badge": 3}


def test_a_killed_copy_resumes_where_it_stopped(recognizer, features, tmp_path, monkeypatch):
    source, target = tmp_path / "g.db", tmp_path / "copy.db"
    _enrolled(source, recognizer, features)
    monkeypatch.setattr(migration, "PAGE_IDENTITIES", 2)
    real_people, pages = migration._people, []

    def dies_on_the_third_page(src, names, damaged):
        pages.append(names)
        if len(pages) == 3:
            raise KeyboardInterrupt("killed")
        return real_people(src, names, damaged)

    monkeypatch.setattr(migration, "_people", dies_on_the_third_page)
    with pytest.raises(KeyboardInterrupt):
        migrate_gallery(source, target)
    monkeypatch.setattr(migration, "_people", real_people)
    with Gallery.open(target, recognizer, create=False) as partial:
        assert partial.stats().identities == 4 and partial.stats().faces == 8, "whole identities only"
    result = migrate_gallery(source, target)
    assert (result.identities, result.faces, result.copied) == (PEOPLE, 2 * PEOPLE, PEOPLE - 4)
    with pytest.raises(GalleryError, match="already exists and is not an interrupted copy"):
        migrate_gallery(source, target)


def test_it_refuses_what_it_cannot_copy_into_or_from(recognizer, features, tmp_path):
    other = tmp_path / "other.db"
    _enrolled(other, recognizer, features)
    source = tmp_path / "g.db"
    _enrolled(source, recognizer, features)
    with pytest.raises(GalleryError, match="already exists and is not an interrupted copy"):
        migrate_gallery(source, other)
    with pytest.raises(Exception, match="absent.db"):
        migrate_gallery(tmp_path / "absent.db", tmp_path / "new.db")
