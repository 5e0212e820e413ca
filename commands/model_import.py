"""``pdsn import dlib FILE --out CHECKPOINT``: a published face model as a checkpoint that ``pdsn export`` takes."""

from __future__ import annotations

import argparse
from pathlib import Path

IMPORT_FORMATS = ("dlib",)


def add_import_command(commands: argparse._SubParsersAction) -> None:
    """Register ``import``."""
    command = commands.add_parser(
        "import", help="convert a published face model (dlib's face ResNet) into a checkpoint for `pdsn export`"
    )
    command.add_argument(
        "format", choices=IMPORT_FORMATS, help="dlib: dlib_face_recognition_resnet_model_v1.dat (public domain)"
    )
    command.add_argument("source", type=Path, help="the model file")
    command.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.pth)")
    command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    command.set_defaults(run=_import)


def _import(args: argparse.Namespace) -> int:
    from pdsn.export.dlib_import import import_dlib

    result = import_dlib(args.source, args.out, overwrite=args.overwrite)
    print(f"read {args.source} (sha256 {result.source_sha256[:16]}...): dlib's face ResNet v1, 150x150 chips -> 128-d")
    if result.check is None:
        print("not compared with dlib (not installed here; `pip install dlib-bin` to compare)")
    else:
        check = result.check
        print(
            f"against {check['against']} on {check['chips']} chips: cosine min {check['cosine_min']:.7f}, "
            f"distance max {check['distance_max']:.1e}: pass"
        )
    print(f"wrote {result.checkpoint}; export it with `pdsn export --checkpoint {result.checkpoint} --dictionary ...`")
    return 0
