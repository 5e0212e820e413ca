"""Every bundle write is atomic and writers take turns: a kill at any step leaves the previous bundle."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from factories import quick_variant, randomized_model

from pdsn.calib.variants import VariantRequest, add_variant
from pdsn.export import bundle_writer
from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.model import bundle_write
from pdsn.model.bundle_format import LOCK_NAME, MANIFEST_NAME, leftovers, sha256_file
from pdsn.model.bundle_write import BundleLockedError, BundleWrite, bundle_lock
from pdsn.model.manifest import read_manifest, verify_files
from pdsn.runtime import open_bundle


def _quick_int8(bundle: Path, seed: int = 3) -> VariantRequest:
    return quick_variant(bundle, seed=seed)


def _hashes(bundle: Path) -> dict[str, str]:
    """SHA-256 of every file in the bundle, leaving out what interrupted writes left at its top."""
    skipped = set(leftovers(bundle))
    return {
        str(p.relative_to(bundle)): sha256_file(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.relative_to(bundle).parts[0] not in skipped
    }


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the kill point runs, not even the writer's own tidying."""


KILL_POINTS = ("staged", "placed-one", "before-switch", "mid-switch", "after-switch")


def _arm(monkeypatch, point: str) -> None:
    """Make the next bundle write die at ``point``, leaving what a killed process would leave."""
    monkeypatch.setattr(BundleWrite, "_finish", lambda self: None)
    if point in ("staged", "placed-one"):
        place, calls = BundleWrite.place, []

        def dying_place(self, staged, preferred):
            calls.append(preferred)
            if len(calls) == (1 if point == "staged" else 2):
                raise Killed(point)
            return place(self, staged, preferred)

        monkeypatch.setattr(BundleWrite, "place", dying_place)
    elif point == "mid-switch":
        replace = os.replace

        def dying_replace(source, target):
            if Path(target).name == MANIFEST_NAME:
                raise Killed(point)
            return replace(source, target)

        monkeypatch.setattr(os, "replace", dying_replace)
    else:
        write_manifest = bundle_write.write_manifest

        def dying_switch(bundle, manifest):
            if point == "after-switch":
                write_manifest(bundle, manifest)
            raise Killed(point)

        monkeypatch.setattr(bundle_write, "write_manifest", dying_switch)


def _check_after_kill(bundle: Path, before: dict[str, str], old_manifest: dict, point: str) -> None:
    assert leftovers(bundle), "the killed writer's staging folder is still there"
    opened = open_bundle(bundle)  # every listed file checked
    verify_files(bundle, opened.manifest)
    if point != "after-switch":
        assert opened.manifest.document() == old_manifest
        now = _hashes(bundle)
        assert {name: now.get(name) for name in before} == before, "a file of the previous bundle changed"
        assert (len(now) > len(before)) == (point != "staged"), "placed files wait, unlisted, for the switch"
    with BundleWrite(bundle, "the next writer"):
        pass
    assert not leftovers(bundle), "the next writer removes what the killed one left"
    after = _hashes(bundle)
    if point == "after-switch":
        assert opened.manifest.document() != old_manifest
        assert set(after) == set(opened.manifest.files) | {MANIFEST_NAME, LOCK_NAME}, "replaced files removed"
    else:
        assert after == before, "byte for byte as it was"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_quantize_leaves_the_previous_bundle(quantized, tmp_path, monkeypatch, point):
    bundle = Path(shutil.copytree(quantized, tmp_path / "bundle"))
    before, manifest = _hashes(bundle), read_manifest(bundle).document()
    _arm(monkeypatch, point)
    with pytest.raises(Killed):
        add_variant(_quick_int8(bundle))
    monkeypatch.undo()
    _check_after_kill(bundle, before, manifest, point)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    from pdsn.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("other") / "other.pth"
    save_checkpoint(path, randomized_model(seed=1), epoch=1)
    return path


_EXPORTED: dict = {}  # the ONNX file and contract of this module's one exported model


@pytest.fixture
def export_once(monkeypatch):
    """Exports after the first copy its ONNX file instead of exporting the same model again (speed only)."""
    export_onnx = bundle_writer.export_onnx

    def cached(model, masks, path, options):
        if not _EXPORTED:
            _EXPORTED["contract"] = export_onnx(model, masks, path, options)
            _EXPORTED["bytes"] = Path(path).read_bytes()
        Path(path).write_bytes(_EXPORTED["bytes"])
        return _EXPORTED["contract"]

    monkeypatch.setattr(bundle_writer, "export_onnx", cached)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_export_overwrite_leaves_the_previous_bundle(
    quantized, tmp_path, monkeypatch, export_once, other_checkpoint, tiny_dictionary_file, point
):
    bundle = Path(shutil.copytree(quantized, tmp_path / "bundle"))
    before, manifest = _hashes(bundle), read_manifest(bundle).document()
    _arm(monkeypatch, point)
    with pytest.raises(Killed):
        export_bundle(
            ExportRequest(out=bundle, checkpoint=other_checkpoint, dictionary=tiny_dictionary_file, overwrite=True)
        )
    monkeypatch.undo()
    _check_after_kill(bundle, before, manifest, point)


def test_export_overwrite_switches_in_place(quantized, tmp_path, export_once, other_checkpoint, tiny_dictionary_file):
    bundle = Path(shutil.copytree(quantized, tmp_path / "bundle"))
    old = read_manifest(bundle).document()
    new = export_bundle(
        ExportRequest(out=bundle, checkpoint=other_checkpoint, dictionary=tiny_dictionary_file, overwrite=True)
    ).manifest
    assert sorted(new.variants) == ["fp32"] and new.variants["fp32"].file != old["variants"]["fp32"]["file"]
    assert set(_hashes(bundle)) == set(new.files) | {MANIFEST_NAME, LOCK_NAME}, "the old bundle's files are gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    open_bundle(bundle)


def test_a_failed_fresh_export_leaves_nothing(tmp_path, export_once, other_checkpoint, tiny_dictionary_file):
    from pdsn.export.parity import ParityError
    from pdsn.model.comparison import ExportGate

    out = tmp_path / "new"
    request = ExportRequest(out=out, checkpoint=other_checkpoint, dictionary=tiny_dictionary_file)
    with pytest.raises(ParityError):
        export_bundle(dataclasses.replace(request, gate=ExportGate(min_cosine=1.5)))
    assert not out.exists()


def test_export_overwrite_refuses_a_folder_that_is_not_a_bundle(tmp_path, other_checkpoint, tiny_dictionary_file):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="no manifest.json: it is not a bundle"):
        export_bundle(
            ExportRequest(out=out, checkpoint=other_checkpoint, dictionary=tiny_dictionary_file, overwrite=True)
        )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_two_concurrent_quantize_runs_both_land(tiny_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    requests = [VariantRequest(bundle, "fp16", holdout=8, progress=False), _quick_int8(bundle)]
    errors: list[BaseException] = []

    def run(request):
        try:
            add_variant(request)
        except BaseException as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=run, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(open_bundle(bundle).manifest.variants) == ["fp16", "fp32", "int8"]
    assert not leftovers(bundle)


def test_a_second_writer_fails_clearly_while_the_lock_is_held(tiny_bundle, tmp_path, monkeypatch):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    before = _hashes(bundle)
    monkeypatch.setattr(bundle_write, "LOCK_TIMEOUT_S", 0.3)
    with bundle_lock(bundle, "pdsn quantize --precision int8"), pytest.raises(BundleLockedError) as error:
        add_variant(VariantRequest(bundle, "fp16", progress=False))
    message = str(error.value)
    assert f"bundle {bundle} is being written by another writer (pdsn quantize --precision int8, pid {os.getpid()}" in (
        message
    )
    assert "waited 0.3 s" in message
    assert _hashes(bundle) == before


def test_a_second_writer_waits_for_the_first(tmp_path):
    events: list[str] = []
    holding = threading.Event()

    def first():
        with bundle_lock(tmp_path, "first"):
            events.append("first in")
            holding.set()
            time.sleep(0.5)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait()
    with bundle_lock(tmp_path, "second", timeout=10):
        events.append("second in")
    thread.join()
    assert events == ["first in", "first out", "second in"]
    assert (tmp_path / LOCK_NAME).read_text() == "", "an idle lock file is empty"


def test_the_next_writer_removes_only_what_a_killed_writer_left(tiny_bundle, tmp_path, caplog):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    before = _hashes(bundle)
    staging = bundle / ".pdsn-staging-dead"
    (staging / "reports").mkdir(parents=True)
    (bundle / "model.int8.0123456789ab.onnx").write_bytes(b"placed, never listed")
    (tmp_path / "outside.txt").write_text("not the bundle's")
    placed = ["model.int8.0123456789ab.onnx", "model.onnx", "../outside.txt", LOCK_NAME]
    (staging / "journal.json").write_text(json.dumps({"placed": placed, "retired": []}))
    (bundle / ".pdsn-tmp-1234-manifest.json").write_text("{")
    with caplog.at_level(logging.WARNING), BundleWrite(bundle, "the next writer"):
        pass
    assert "removed what an interrupted write left behind: .pdsn-staging-dead, .pdsn-tmp-1234-manifest.json" in (
        caplog.text
    )
    assert _hashes(bundle) == before and not leftovers(bundle)
    assert (tmp_path / "outside.txt").read_text() == "not the bundle's"
