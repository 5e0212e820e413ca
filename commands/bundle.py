"""``pdsn export|quantize|build|verify|add-estimator``: making a bundle, its variants and engines, and checking it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdsn.commands.arguments import cosine, json_path, names, numbers, positive
from pdsn.model.shipped_models import WEIGHTS


def add_bundle_commands(commands: argparse._SubParsersAction) -> None:
    """Register the commands that make and check bundles."""
    export = commands.add_parser("export", help="checkpoint + dictionary -> verified ONNX bundle")
    export.add_argument(
        "--checkpoint", type=Path, help="reference-format or `pdsn import` checkpoint (default: --weights)"
    )
    export.add_argument(
        "--dictionary",
        type=Path,
        help="mean_mask.txt directory, or .npy/.npz (required with --checkpoint; default: the shipped model's)",
    )
    export.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="without --checkpoint: dlib's face ResNet with its dictionary (the default), the trained demo model "
        "(synthetic faces), or seeded timing weights of --architecture",
    )
    export.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    export.add_argument(
        "--architecture", help="lresnet50e-ir | lresnet10e-ir | lresnet-ir-tiny (default: inferred from the checkpoint)"
    )
    export.add_argument(
        "--tau", type=float, help="binarise mean masks by discarding this fraction of each item (default 0.25)"
    )
    export.add_argument("--threshold", type=float, help="binarise mean masks at this value instead of by --tau")
    export.add_argument(
        "--float-input", action="store_true", help="float32 NCHW normalised input instead of uint8 NHWC"
    )
    export.add_argument(
        "--embed-dictionary", action="store_true", help="dictionary as an initializer, not a graph input"
    )
    export.add_argument("--l2-normalize", action="store_true", help="L2-normalise embeddings in the graph")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--seed", type=int, default=0, help="seed of seeded weights and parity faces")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    export.set_defaults(run=_export)

    quantize = commands.add_parser("quantize", help="add a gated FP16 or calibrated INT8 variant to a bundle")
    quantize.add_argument("--bundle", type=Path, required=True)
    quantize.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    quantize.add_argument("--calib", help="folder or list file of aligned 112x96 crops, or 'synthetic'")
    quantize.add_argument("--method", default="entropy", help="entropy | minmax | percentile (int8)")
    quantize.add_argument(
        "--quantizer",
        choices=("onnxruntime", "modelopt"),
        default="onnxruntime",
        help="int8 Q/DQ placement: onnxruntime (default) or NVIDIA ModelOpt (TensorRT's rules; installed separately)",
    )
    quantize.add_argument(
        "--weight-bits",
        type=int,
        choices=(7, 8),
        help="int8 weight range: 7 (default with onnxruntime) is safe on x86 CPUs without VNNI, "
        "whose 16-bit multiply-adds 8-bit weights can overflow; 8 for GPUs and VNNI CPUs "
        "(and always with modelopt)",
    )
    quantize.add_argument("--samples", type=positive, default=512, help="calibration images (default 512)")
    quantize.add_argument("--holdout", type=positive, default=64, help="held-out faces for the gate (default 64)")
    quantize.add_argument("--seed", type=int, default=0)
    quantize.add_argument("--pairs", type=Path, help="LFW-format pairs.txt: report the accuracy change")
    quantize.add_argument("--pairs-root", type=Path, help="folder of the pairs' aligned crops")
    quantize.add_argument("--min-cosine", type=cosine, help="gate: minimum cosine to FP32 (fp16 default 0.9995)")
    quantize.add_argument("--mean-cosine", type=cosine, help="gate: mean cosine to FP32 (int8 default 0.99)")
    quantize.add_argument("--p1-cosine", type=cosine, help="gate: 1st-percentile cosine (int8 default 0.98)")
    quantize.set_defaults(run=_quantize)

    build = commands.add_parser("build", help="compile a bundle's ONNX variant into a TensorRT engine")
    build.add_argument("--bundle", type=Path, required=True)
    build.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="which ONNX variant to build from (default fp32)",
    )
    build.add_argument(
        "--flavour",
        choices=("auto", "tensorrt", "tensorrt-rtx"),
        default="auto",
        help="data-centre TensorRT or TensorRT-RTX (default: tensorrt if installed, else RTX)",
    )
    build.add_argument("--batch", type=numbers, default=(1, 16, 128), help="profile MIN,OPT,MAX (default 1,16,128)")
    build.add_argument(
        "--fdm-impl",
        choices=("native", "plugin"),
        default="native",
        help="FDM op as the inlined standard-op body or the fused plugin (default native)",
    )
    build.add_argument(
        "--compute-capability",
        type=names,
        default=(),
        help="TensorRT-RTX targets, e.g. 7.5 or 8.6,8.9 (default: portable, 8.0+)",
    )
    build.add_argument(
        "--hardware-compatibility",
        choices=("none", "ampere-plus", "same-cc"),
        default="none",
        help="data-centre TensorRT: also run on other GPUs",
    )
    build.add_argument(
        "--version-compatible",
        action="store_true",
        help="data-centre TensorRT: run on later runtimes of the same major version",
    )
    build.add_argument("--opt-level", type=int, help="builder optimization level 0-5 (default TensorRT's)")
    build.add_argument("--quiet", action="store_true", help="no build progress lines")
    build.set_defaults(run=_build)

    verify = commands.add_parser("verify", help="check a bundle's files and every variant on every backend")
    verify.add_argument("--bundle", type=Path, required=True)
    verify.add_argument("--holdout", default="synthetic", help="faces to compare on: folder, list file or 'synthetic'")
    verify.add_argument("--faces", type=positive, default=32, help="how many held-out faces (default 32)")
    verify.add_argument(
        "--digest", help="refuse any manifest but the one with this SHA-256 (printed by an earlier pdsn verify)"
    )
    verify.add_argument("--report", type=json_path, help="where to write the JSON (default BUNDLE/reports/verify.json)")
    verify.set_defaults(run=_verify)

    add_estimator = commands.add_parser("add-estimator", help="put an occlusion estimator in a bundle (occlusion=auto)")
    add_estimator.add_argument("--bundle", type=Path, required=True)
    add_estimator.add_argument(
        "--estimator", type=Path, help="a `pdsn train-occlusion` .pth (default: the shipped one)"
    )
    add_estimator.add_argument(
        "--evaluation",
        type=Path,
        help="its `pdsn evaluate-occlusion --report` JSON, copied into the bundle (default: NAME_evaluation.json "
        "beside the .pth, when present)",
    )
    add_estimator.set_defaults(run=_add_estimator)


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
        weights=args.weights,
    )
    result = export_bundle(request)
    print(format_parity_table(result.parity))
    print(f"wrote {result.bundle} ({result.manifest.model.name}, weights: {result.manifest.model.weights})")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from pdsn.calib.gates import DEFAULT_GATES, PrecisionGate
    from pdsn.calib.variants import VariantRequest, add_variant

    gate = DEFAULT_GATES[args.precision]
    if any(v is not None for v in (args.min_cosine, args.mean_cosine, args.p1_cosine)):
        gate = PrecisionGate(args.min_cosine, args.mean_cosine, args.p1_cosine)
    entry = add_variant(
        VariantRequest(
            bundle=args.bundle,
            precision=args.precision,
            calib=args.calib,
            method=args.method,
            quantizer=args.quantizer,
            weight_bits=args.weight_bits,
            samples=args.samples,
            holdout=args.holdout,
            seed=args.seed,
            gates={args.precision: gate},
            pairs=args.pairs,
            pairs_root=args.pairs_root,
        )
    )
    parity = entry["parity"]
    print(
        f"{args.precision} variant {entry['file']} passed its gate {parity['gate']} on "
        f"{parity['holdout']['samples']} held-out faces: cosine min {parity['cosine_min']:.5f}, "
        f"mean {parity['cosine_mean']:.5f}, p1 {parity['cosine_p1']:.5f}"
    )
    if "pairs" in entry:
        print(
            f"verification accuracy on {entry['pairs']['pairs']} pairs: fp32 "
            f"{entry['pairs']['fp32_accuracy']:.4f}, {args.precision} {entry['pairs']['variant_accuracy']:.4f}"
        )
    return 0


def _build(args: argparse.Namespace) -> int:
    from pdsn.engines.build import EngineBuildRequest, build_engine
    from pdsn.engines.flavour import BuildTargets, report_to_stderr

    entry = build_engine(
        EngineBuildRequest(
            bundle=args.bundle,
            precision=args.precision,
            flavour=args.flavour,
            batch=args.batch,
            fdm_impl=args.fdm_impl,
            optimization_level=args.opt_level,
            verbose=args.verbose,
            targets=BuildTargets(args.compute_capability, args.hardware_compatibility, args.version_compatible),
            progress=None if args.quiet else report_to_stderr,
        )
    )
    profile = entry["profile"]
    print(
        f"built {entry['file']} ({entry['bytes'] / 2**20:.1f} MiB) in {entry['build_seconds']:.1f} s: "
        f"{entry['flavour']} {entry['version']}, {entry['precision']}, target {entry['compute_capability']}, "
        f"batch {profile['min']}..{profile['max']} (tuned for {profile['opt']}), FDM {entry['fdm_impl']}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pdsn.verify import print_and_save, verify_bundle

    result = verify_bundle(args.bundle, args.holdout, args.faces, expected_digest=args.digest)
    print(f"bundle {args.bundle}: every file matches its manifest hash")
    print_and_save(result, args.report or args.bundle / "reports" / "verify.json")
    return 0 if result["passed"] else 1


def _add_estimator(args: argparse.Namespace) -> int:
    from pdsn.export.estimator_bundle import add_estimator
    from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR

    estimator = args.estimator or SHIPPED_ESTIMATOR
    entry = add_estimator(args.bundle, estimator, args.evaluation)
    print(
        f"added {entry['file']} to {args.bundle} (parity: max |error| {entry['parity']['max_abs_error']:.2e}, "
        f"cells agree {entry['parity']['cell_agreement']:.4f}); occlusion='auto' now works with this bundle"
    )
    evaluation = entry["evaluation"]
    if evaluation is None:
        print(
            f"no evaluation report of {estimator} was found, so the bundle carries none; write one with "
            f"`pdsn evaluate-occlusion --estimator {estimator} --report REPORT.json` and pass --evaluation"
        )
    else:
        verdict = "every goal met" if evaluation["goals_met"] else "NOT every goal met"
        print(f"its evaluation report is {evaluation['report']} in the bundle ({verdict})")
    return 0
