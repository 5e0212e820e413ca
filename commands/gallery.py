"""``pdsn gallery enroll|identify|list|remove``: a gallery of enrolled identities from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdsn.commands.arguments import (
    backend_options,
    bundle_options,
    cells,
    cosine,
    detection_options,
    detection_settings,
    face_choice,
    gallery_location,
    positive,
)
from pdsn.commands.faces import face_json, noted

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_gallery_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn gallery`` and its subcommands."""
    gallery = commands.add_parser("gallery", help="enroll, identify, list and remove identities (1:N, PDSN protocol)")
    actions = gallery.add_subparsers(dest="action", required=True)

    enroll = actions.add_parser(
        "enroll", help="enroll a folder of identity sub-folders of photos (one face each) or aligned crops"
    )
    _common(enroll)
    enroll.add_argument("folder", type=Path, help="one sub-folder per identity, named by the identity")
    enroll.add_argument("--replace", action="store_true", help="replace identities already enrolled")
    enroll.add_argument("--occlusion", type=cells, help="occluded cells of every enrolled face (default none), or auto")
    enroll.add_argument(
        "--face",
        type=face_choice,
        help="which face of each photo: 'largest' or an index (default: a photo must show exactly one face)",
    )
    detection_options(enroll)
    enroll.add_argument(
        "--no-features",
        action="store_true",
        help="a new gallery keeps only the warm patterns' embeddings, not the trunk features",
    )
    enroll.set_defaults(run=_enroll)

    identify = actions.add_parser("identify", help="the best-matching identities of every face in photos (or crops)")
    _common(identify)
    identify.add_argument("images", nargs="+", type=Path, help="photos, or aligned 112x96 (or 112x112) RGB crops")
    detection_options(identify)
    identify.add_argument("--occlusion", type=cells, help="occluded cells of the probe, e.g. 10,11,12,13")
    identify.add_argument("-k", type=positive, default=5, help="how many identities (default 5)")
    identify.add_argument("--threshold", type=cosine, help="only matches scoring at least this cosine")
    identify.set_defaults(run=_identify)

    listing = actions.add_parser("list", help="enrolled identities")
    _common(listing)
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--limit", type=positive)
    listing.set_defaults(run=_list)

    check = actions.add_parser("check", help="list damaged faces (left out of searches); --repair removes them")
    _common(check)
    check.add_argument(
        "--repair", action="store_true", help="remove the damaged faces (and identities left without one)"
    )
    check.set_defaults(run=_check)

    remove = actions.add_parser("remove", help="remove identities and their faces")
    _common(remove)
    remove.add_argument("identities", nargs="+")
    remove.set_defaults(run=_remove)

    warm = actions.add_parser(
        "warm",
        help="pgvector gallery: fill in the warm patterns' embeddings faces lack (resumable); --add lists a new one",
    )
    _common(warm)
    warm.add_argument(
        "--add", type=cells, help="a new warm pattern's cells, e.g. 0,1,5,6: filled in, then its HNSW graph built"
    )
    warm.set_defaults(run=_warm)

    migrate = actions.add_parser(
        "migrate",
        help="copy a gallery between stores (SQLite file, postgresql://, pgvector:// or pgvector+embedded:// URL); "
        "run again to resume",
    )
    migrate.add_argument("source", type=gallery_location, help="the gallery to copy: a SQLite file or a URL")
    migrate.add_argument("destination", type=gallery_location, help="where to copy it: a new file or an empty database")
    migrate.set_defaults(run=_migrate)


def _common(parser: argparse.ArgumentParser) -> None:
    bundle_options(parser)
    parser.add_argument(
        "--gallery",
        type=gallery_location,
        required=True,
        help="the gallery: a SQLite file (created on enroll), a postgresql:// URL, or a pgvector one searched in the "
        "database (pgvector://..., pgvector+embedded:///path/to/dir)",
    )
    parser.add_argument("--precision", default="auto", help="trunk precision (the gallery records it; default auto)")


def _open(args: argparse.Namespace, create: bool = False, **options):
    from pdsn.runtime import Recognizer
    from pdsn.runtime.gallery import Gallery

    recognizer = Recognizer.open(
        args.bundle, backend=args.backend, device=args.device, precision=args.precision, **backend_options(args)
    )
    try:
        return recognizer, Gallery.open(args.gallery, recognizer, create=create, **options)
    except BaseException:
        recognizer.close()
        raise


def _enroll(args: argparse.Namespace) -> int:
    people = _identity_folders(args.folder)
    settings = detection_settings(args)
    recognizer, gallery = _open(args, create=True, keep_features=not args.no_features)
    with recognizer, gallery:
        faces = 0
        for name, paths in _progress(people, "enrolling"):
            images = [str(path) for path in paths]
            faces += len(
                gallery.enroll(name, images, args.occlusion, replace=args.replace, face=args.face, detection=settings)
            )
        print(f"enrolled {len(people)} identities ({faces} faces) into {gallery.location}; it holds {len(gallery)}")
    return 0


def _identify(args: argparse.Namespace) -> int:
    settings = detection_settings(args)
    recognizer, gallery = _open(args)
    with recognizer, gallery:
        images = [str(path) for path in args.images]
        results = gallery.identify_many(images, args.occlusion, args.k, args.threshold, detection=settings)
        note = noted(recognizer.bundle)
        for result in results:
            print(
                json.dumps(
                    {
                        "image": images[result.image],
                        **({} if result.face is None else face_json(result.face)),
                        "occluded_cells": result.occluded_cells,
                        "matches": [
                            {
                                "identity": m.identity,
                                "score": round(m.score, 6),
                                "face_id": m.face_id,
                                "occluded_cells": m.occluded_cells,
                                "exact": m.exact,
                            }
                            for m in result.matches
                        ],
                        **note,
                    }
                )
            )
    return 0


def _list(args: argparse.Namespace) -> int:
    recognizer, gallery = _open(args)
    with recognizer, gallery:
        for name in gallery.identities(args.offset, args.limit):
            print(name)
    return 0


def _check(args: argparse.Namespace) -> int:
    """0 when the gallery holds no damaged face (or they were removed), 1 when damaged faces remain."""
    recognizer, gallery = _open(args)
    with recognizer, gallery:
        for face in gallery.damaged:
            print(json.dumps({"face_id": face.face_id, "identity": face.identity, "damage": face.reason}))
        if not gallery.damaged:
            print(f"{gallery.location}: {gallery.stats().faces} faces, none damaged")
            return 0
        if not args.repair:
            print(f"{len(gallery.damaged)} damaged face(s), left out of searches; `--repair` removes them")
            return 1
        removed, emptied = gallery.repair()
        print(
            f"removed {len(removed)} damaged face(s)"
            + (f" and the identities left without one: {emptied}" if emptied else "")
        )
        return 0


def _migrate(args: argparse.Namespace) -> int:
    from pdsn.runtime.gallery.locations import shown_location
    from pdsn.runtime.gallery.migrate import migrate_gallery

    result = migrate_gallery(args.source, args.destination)
    print(
        f"{shown_location(args.destination)}: {result.identities} identities, {result.faces} faces "
        f"({result.copied} identities copied by this run); counts match, and {result.sampled} identities read back "
        f"array for array as in {shown_location(args.source)}"
    )
    for face in result.damaged:
        print(f"left behind: damaged face {face.face_id} of {face.identity!r} ({face.reason})")
    if result.needs_warm:
        print(
            f"{shown_location(args.destination)} needs its warm patterns' embeddings computed before it can be "
            f"searched: pdsn gallery warm --gallery {shown_location(args.destination)} --bundle BUNDLE"
        )
    return 0


def _warm(args: argparse.Namespace) -> int:
    from pdsn.runtime.gallery.locations import is_vector_location

    if not is_vector_location(str(args.gallery)):
        raise ValueError(
            f"--gallery {args.gallery}: `pdsn gallery warm` fills a pgvector gallery's warm patterns; an in-process "
            "gallery computes its own when it opens or searches"
        )
    recognizer, gallery = _open(args)
    with recognizer, gallery:
        filled = [0]

        def progress(count: int) -> None:
            filled[0] += count

        if args.add is not None:
            if args.add == "auto":
                raise ValueError("--add: expected the new warm pattern's cells, e.g. 0,1,5,6, not auto")
            gallery.add_warm_pattern(args.add, progress)
        else:
            gallery.warm(progress)
        print(
            f"{gallery.location}: filled {filled[0]} faces' warm embeddings; warm patterns searched: {gallery.stats().indexes}"
        )
    return 0


def _remove(args: argparse.Namespace) -> int:
    recognizer, gallery = _open(args)
    with recognizer, gallery:
        for name in args.identities:
            gallery.remove(name)
        print(f"removed {len(args.identities)} identities; {len(gallery)} remain in {gallery.location}")
    return 0


def _identity_folders(folder: Path) -> list[tuple[str, list[Path]]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery enroll: {folder} is not a folder of identity sub-folders")
    people = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            people.append((person.name, images))
    if not people:
        raise ValueError(
            f"gallery enroll: {folder} has no identity sub-folders with images ({', '.join(IMAGE_SUFFIXES)}); "
            f"expected FOLDER/<identity>/<image>"
        )
    return people


def _progress(items: list, description: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="identity", leave=False)
