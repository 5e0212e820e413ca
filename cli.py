"""The ``pdsn`` command. Subcommands import what they need lazily: runtime ones never load torch."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"pdsn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdsn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="checkpoint + dictionary -> verified ONNX bundle")
    export.add_argument("--checkpoint", type=Path, help="reference-format checkpoint (default: embedded demo weights)")
    export.add_argument("--dictionary", type=Path, help="mean_mask.txt directory, or .npy/.npz (default: demo dictionary)")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    export.add_argument("--architecture", help="lresnet50e-ir | lresnet10e-ir (default: inferred from the checkpoint)")
    export.add_argument("--tau", type=float, default=0.25, help="fraction of each mask item discarded (default 0.25)")
    export.add_argument("--threshold", type=float, help="binarise by threshold instead of tau")
    export.add_argument("--float-input", action="store_true", help="float32 NCHW normalised input instead of uint8 NHWC")
    export.add_argument("--embed-dictionary", action="store_true", help="dictionary as an initializer, not a graph input")
    export.add_argument("--l2-normalize", action="store_true", help="L2-normalise embeddings in the graph")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--seed", type=int, default=0, help="seed of the demo weights and parity faces")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    export.set_defaults(run=_export)

    embed = commands.add_parser("embed", help="embed aligned face crops")
    _bundle_options(embed)
    embed.add_argument("images", nargs="+", type=Path, help="aligned 112x96 RGB crops")
    embed.add_argument("--occlusion", type=_cells, help="occluded cells for every image, e.g. 10,11,12,13")
    embed.add_argument("--out", type=Path, help="write embeddings to this .npy instead of printing")
    embed.set_defaults(run=_embed)

    compare = commands.add_parser("compare", help="verification score of two aligned faces (PDSN protocol)")
    _bundle_options(compare)
    compare.add_argument("image_a", type=Path)
    compare.add_argument("image_b", type=Path)
    compare.add_argument("--occlusion-a", type=_cells, help="occluded cells of image A")
    compare.add_argument("--occlusion-b", type=_cells, help="occluded cells of image B")
    compare.add_argument("--threshold", type=float, help="decide same/different at this cosine score")
    compare.set_defaults(run=_compare)

    verify = commands.add_parser("verify", help="check a bundle's files and print its parity reports")
    verify.add_argument("--bundle", type=Path, required=True)
    verify.set_defaults(run=_verify)

    demo = commands.add_parser("demo", help="the main job on the embedded default model")
    demo.add_argument("--out", type=Path, default=Path("pdsn-demo-bundle"), help="where to write the demo bundle")
    demo.add_argument("--architecture", default="lresnet50e-ir")
    demo.set_defaults(run=_demo)
    return parser


def _bundle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--backend", default="auto", help="auto | onnxruntime")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")


def _cells(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated cell ids 0..24, got {text!r}") from None


def _export(args: argparse.Namespace) -> int:
    from pdsn.export.bundle_writer import ExportRequest, export_bundle
    from pdsn.export.onnx_export import ExportOptions
    from pdsn.export.parity import format_parity_table
    from pdsn.model.network import architecture_by_name

    request = ExportRequest(
        out=args.out,
        checkpoint=args.checkpoint,
        dictionary=args.dictionary,
        architecture=architecture_by_name(args.architecture) if args.architecture else None,
        tau=args.tau,
        threshold=args.threshold,
        options=ExportOptions(
            image_layout="nchw-float32" if args.float_input else "nhwc-uint8",
            embed_dictionary=args.embed_dictionary,
            l2_normalize=args.l2_normalize,
            opset=args.opset,
        ),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    result = export_bundle(request)
    print(format_parity_table(result.parity))
    print(f"wrote {result.bundle} ({result.manifest['model']['architecture']['name']}, "
          f"weights: {result.manifest['model']['weights']})")
    return 0


def _open(args: argparse.Namespace):
    from pdsn.runtime import Recognizer

    return Recognizer.open(args.bundle, backend=args.backend, device=args.device)


def _embed(args: argparse.Namespace) -> int:
    from pdsn.runtime.preprocess import load_image

    images = [load_image(path) for path in args.images]
    with _open(args) as recognizer:
        embeddings = recognizer.embed(images, occlusion=args.occlusion)
    if args.out:
        np.save(args.out, embeddings)
        print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {args.out}")
    else:
        for path, vector in zip(args.images, embeddings):
            print(json.dumps({"image": str(path), "embedding": [round(float(v), 6) for v in vector]}))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pdsn.runtime.preprocess import load_image

    with _open(args) as recognizer:
        result = recognizer.verify(
            load_image(args.image_a), load_image(args.image_b),
            args.occlusion_a, args.occlusion_b, threshold=args.threshold,
        )
    print(f"cosine score {result.score:.6f}  (masked cells: {result.occluded_cells or 'none'})")
    if result.match is not None:
        print("same person" if result.match else "different people")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pdsn.runtime.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    print(f"bundle {bundle.path}: {len(bundle.manifest['files'])} files, hashes verified")
    for precision, variant in bundle.manifest["variants"].items():
        parity = variant.get("parity", {})
        print(f"  {precision:<5} {variant['file']:<18} vs {parity.get('against')}: "
              f"cosine min {parity.get('cosine_min'):.7f}, max |err| {parity.get('max_abs_error'):.2e}, "
              f"{'pass' if parity.get('passed') else 'FAIL'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pdsn.demo import run_demo

    return run_demo(args.out, args.architecture)


if __name__ == "__main__":
    sys.exit(main())
