"""``pdsn gallery migrate SRC DST``: a gallery copied between stores (a SQLite file, a PostgreSQL database).

The faces are copied as stored (features, embeddings, patterns, checksums recomputed by the writer),
so no model is needed and scores in DST are those of SRC (a pgvector store keeps pattern embeddings in
half precision). A pgvector DST copied from a gallery that kept features, not pattern embeddings,
needs them computed with the model: ``pdsn gallery warm`` (``Gallery.warm``) does so, and until then
the DST refuses searches, saying so. DST records the model fingerprint and
settings of SRC, where it was copied from, and, once the copy is whole, that it is. Identities are copied a
page at a time, each page in one transaction: a copy that is killed leaves whole identities only, and
running the same command again copies the rest. At the end the identity and face counts are compared,
and a sample of identities is read back from both sides and compared array for array.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.runtime.gallery.locations import open_store, shown_location
from pdsn.runtime.gallery.pgvector_store import PgvectorStore
from pdsn.runtime.gallery.records import DamagedFace, FaceRecord, GalleryError, GalleryStore

# DST's meta records where it was copied from, and that the copy completed (meta keys are written once).
SOURCE_KEY, COMPLETE_KEY = "migrated_from", "migration_complete"
PAGE_IDENTITIES = 200
SAMPLE_IDENTITIES = 32


@dataclass(frozen=True)
class Migration:
    identities: int  # in DST at the end
    faces: int
    copied: int  # identities this run copied (the rest were there from an earlier, interrupted run)
    damaged: list[DamagedFace]  # faces of SRC that could not be read and were left behind
    sampled: int  # identities compared array for array
    needs_warm: bool = False  # a pgvector DST lacks warm embeddings SRC did not keep (``Gallery.warm`` adds them)


def migrate_gallery(
    source: str | Path, destination: str | Path, progress: Callable[[int, int], None] | None = None
) -> Migration:
    """Copy the gallery at ``source`` into ``destination`` (new, or one this copy was interrupted in)."""
    src = open_store(source, create=False)
    try:
        meta = src.read_meta()
        if not meta:
            raise GalleryError(f"gallery {shown_location(source)} does not exist or holds no gallery")
        dst = open_store(destination, create=True)
        try:
            _bind_destination(dst, meta, shown_location(source), shown_location(destination))
            damaged: list[DamagedFace] = []
            copied, total, offset = 0, src.count(), 0
            with _bulk(dst):
                while names := src.identities(offset, PAGE_IDENTITIES):
                    offset += len(names)
                    missing = [name for name in names if not dst.contains(name)]
                    if missing:
                        dst.add_identities(_people(src, missing, damaged), replace=False)
                        copied += len(missing)
                    if progress is not None:
                        progress(offset, total)
            result = _checked(src, dst, copied, damaged, source, destination)
            if isinstance(dst, PgvectorStore):
                result = dataclasses.replace(result, needs_warm=not all(w.complete for w in dst.warm_patterns()))
            dst.write_meta({COMPLETE_KEY: "true"})
            return result
        finally:
            dst.close()
    finally:
        src.close()


@contextmanager
def _bulk(dst: GalleryStore) -> Iterator[None]:
    """A pgvector destination builds its HNSW indexes once, after the copy, rather than face by face."""
    if not isinstance(dst, PgvectorStore):
        yield
        return
    dst.drop_indexes()
    try:
        yield
    finally:
        dst.build_indexes()


def _bind_destination(dst: GalleryStore, meta: dict, source: str, destination: str) -> None:
    """A new DST takes SRC's record; an existing one must be this copy's, interrupted."""
    existing = dst.read_meta()
    if not existing:
        dst.write_meta({**meta, SOURCE_KEY: source})
        return
    same = all(existing.get(key) == meta.get(key) for key in ("format", "format_version", "fingerprint", "settings"))
    if not same or existing.get(SOURCE_KEY) != source or COMPLETE_KEY in existing:
        raise GalleryError(
            f"gallery {destination} already exists and is not an interrupted copy of {source}; migrate into a new "
            f"location (an empty database or a file that does not exist yet)"
        )


def _people(src: GalleryStore, names: list[str], damaged: list[DamagedFace]) -> list[tuple[str, dict, list]]:
    faces: dict[str, list[FaceRecord]] = {name: [] for name in names}
    for record in src.faces_of(names, damaged=damaged):
        faces[record.identity].append(record)
    return [(name, src.metadata(name), faces[name]) for name in names if faces[name]]


def _checked(
    src: GalleryStore, dst: GalleryStore, copied: int, damaged: list[DamagedFace], source, destination
) -> Migration:
    counts = {side: (store.count(), len(store.face_ids())) for side, store in (("src", src), ("dst", dst))}
    expected = (counts["src"][0], counts["src"][1] - len(damaged))
    if counts["dst"] != expected:
        raise GalleryError(
            f"after copying, {shown_location(destination)} holds {counts['dst'][0]} identities and {counts['dst'][1]} "
            f"faces, but {shown_location(source)} holds {expected[0]} and {expected[1]} readable faces; run the "
            f"migration again (it copies what is missing)"
        )
    names = src.identities()
    sample = names[:: max(1, len(names) // SAMPLE_IDENTITIES)][:SAMPLE_IDENTITIES]
    # Pattern embeddings compare at the coarser of the two stores' precisions (pgvector keeps half precision).
    precision = min((np.dtype(store.pattern_dtype) for store in (src, dst)), key=lambda d: d.itemsize)
    for name in sample:
        theirs, ours = list(src.faces_of([name], damaged=[])), list(dst.faces_of([name]))
        if len(theirs) != len(ours) or any(not _same(a, b, precision) for a, b in zip(theirs, ours)):
            raise GalleryError(
                f"identity {name!r} reads back differently from {shown_location(destination)} than from "
                f"{shown_location(source)}; the copy is not trustworthy: remove it and migrate again"
            )
        if json.dumps(src.metadata(name), sort_keys=True) != json.dumps(dst.metadata(name), sort_keys=True):
            raise GalleryError(
                f"identity {name!r}: its metadata differs after copying to {shown_location(destination)}"
            )
    return Migration(counts["dst"][0], counts["dst"][1], copied, damaged, len(sample))


def _same(a: FaceRecord, b: FaceRecord, precision: np.dtype) -> bool:
    if a.cells != b.cells or sorted(a.patterns) != sorted(b.patterns):
        return False
    for x, y in ((a.base, b.base), (a.features, b.features)):
        if x is None or y is None:
            if x is not y:
                return False
        elif x.dtype != y.dtype or not np.array_equal(x, y):
            return False
    return all(np.array_equal(a.patterns[p].astype(precision), b.patterns[p].astype(precision)) for p in a.patterns)
