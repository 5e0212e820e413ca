"""``pdsn convert-mtcnn`` and ``pdsn add-detector``: the face detector, from its published weights into bundles."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_detector_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``convert-mtcnn`` and ``add-detector``."""
    convert = commands.add_parser(
        "convert-mtcnn", help="convert MTCNN's PyTorch weights (facenet-pytorch's) into the detector's ONNX files"
    )
    convert.add_argument(
        "source", type=Path, help="the facenet-pytorch 2.6.0 wheel, or a folder with pnet/rnet/onet.pt"
    )
    convert.add_argument(
        "--out", type=Path, required=True, help="folder to write pnet/rnet/onet.onnx and conversion.json"
    )
    convert.set_defaults(run=_convert)

    add = commands.add_parser("add-detector", help="put the face detector into a bundle exported without one")
    add.add_argument("--bundle", type=Path, required=True)
    add.add_argument("--detector", type=Path, help="a `pdsn convert-mtcnn` folder (default: the shipped one)")
    add.set_defaults(run=_add)


def _convert(args: argparse.Namespace) -> int:
    from pdsn.export.detector_export import convert_mtcnn

    report = convert_mtcnn(args.source, args.out)
    for name, entry in report["nets"].items():
        parity = entry["parity"]
        print(
            f"{name}: max |error| {parity['max_abs_error']:.2e}, cosine min {parity['cosine_min']:.7f} against PyTorch"
        )
    print(f"wrote {args.out} (add a LICENSE file with the weights' notices before placing it in bundles)")
    return 0


def _add(args: argparse.Namespace) -> int:
    from pdsn.export.detector_bundle import add_detector
    from pdsn.model.detector_contract import SHIPPED_DETECTOR

    entry = add_detector(args.bundle, args.detector or SHIPPED_DETECTOR)
    print(f"added the face detector to {args.bundle}: {', '.join(entry['files'].values())}")
    return 0
