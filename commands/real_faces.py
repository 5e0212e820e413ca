"""``pdsn real-faces``: augmented chips of the registry's real faces; ``pdsn evaluate-real``: a checkpoint and
dictionary measured on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdsn.commands.arguments import nonnegative, positive


def add_real_face_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn real-faces`` and ``pdsn evaluate-real``."""
    from pdsn.model.crop_alignment import CROP_ALIGNMENTS, DLIB_CHIP_150

    chips = commands.add_parser(
        "real-faces",
        help="augmented chips of the registry's real faces (10 faces of 8 people), one folder per person",
    )
    chips.add_argument("--out", type=Path, required=True, help="folder of identity sub-folders to write")
    chips.add_argument("--per-face", type=positive, default=64, help="chips per face (default 64)")
    chips.add_argument("--seed", type=nonnegative, default=0, help="augmentation seed (default 0)")
    chips.add_argument(
        "--alignment",
        choices=sorted(CROP_ALIGNMENTS),
        default=DLIB_CHIP_150,
        help=f"the chips' crop (default {DLIB_CHIP_150})",
    )
    chips.set_defaults(run=_real_faces)

    evaluate = commands.add_parser(
        "evaluate-real",
        help="a checkpoint and dictionary on the registry's real faces: decision threshold, group photo, FDM",
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--dictionary", type=Path, required=True)
    evaluate.add_argument("--estimator", type=Path, help="an occlusion estimator .pth to put in the measured bundle")
    evaluate.add_argument("--work", type=Path, required=True, help="folder for the measured bundle")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for evaluation.json and evaluation.md")
    evaluate.set_defaults(run=_evaluate_real)


def _real_faces(args: argparse.Namespace) -> int:
    from pdsn.bench.real_faces import write_identity_folders

    counts = write_identity_folders(args.out, args.per_face, args.seed, args.alignment)
    print(f"wrote {sum(counts.values())} chips of {len(counts)} people under {args.out}: {counts}")
    return 0


def _evaluate_real(args: argparse.Namespace) -> int:
    from pdsn.bench.real_model_report import evaluate_on_real_faces, markdown

    report = evaluate_on_real_faces(args.checkpoint, args.dictionary, args.work, args.out, args.estimator)
    print(markdown(report))
    return 0
