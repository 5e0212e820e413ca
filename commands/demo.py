"""``pdsn demo``: the main job on the embedded default model (or the synthetic demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn demo``."""
    from pdsn.train.evaluate import EVAL_PAIRS

    demo = commands.add_parser("demo", help="the main job on the embedded default model")
    which = demo.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--photo",
        type=Path,
        help="a photo of several people: the default model (dlib's) enrolls and identifies them behind occluders",
    )
    which.add_argument(
        "--synthetic",
        action="store_true",
        help="the trained demo model's run on synthetic faces (variants, accuracy, LResNet50E-IR timing)",
    )
    demo.add_argument("--out", type=Path, default=Path("pdsn-demo-bundle"), help="where to write the demo bundle")
    demo.add_argument(
        "--bench-work",
        type=Path,
        default=Path("pdsn-bench-bundle"),
        help="the timing bundle of seeded weights, shared with `pdsn bench` (reused when present)",
    )
    demo.add_argument("--bench-architecture", default="lresnet50e-ir", help="architecture timed (default %(default)s)")
    demo.add_argument(
        "--eval-pairs",
        type=int,
        default=EVAL_PAIRS,
        help="synthetic verification pairs, a multiple of 20 (default %(default)s)",
    )
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.photo is not None:
        from pdsn.photo_demo import run_photo_demo

        return run_photo_demo(args.photo, args.out)
    from pdsn.demo import run_demo

    return run_demo(args.out, args.bench_work, args.bench_architecture, args.eval_pairs)
