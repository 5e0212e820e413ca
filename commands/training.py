"""The training pipeline's ``pdsn`` subcommands; registered by ``pdsn.cli``.

Handlers import what they need when they run, so building the parser loads no torch (only the
numpy-level data and evaluation modules, for their defaults); stage settings left out on the
command line take the defaults of their config classes. ``pdsn.cli.main`` prints a user's error (a
PdsnError, or a bad value or file) as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pdsn.model.dictionary import DEFAULT_TAU
from pdsn.runtime.backends import BACKEND_CHOICES
from pdsn.train.data import (
    DEFAULT_PAIRS_PER_CELL,
    SYNTHETIC,
    SYNTHETIC_IDENTITIES,
    SYNTHETIC_IMAGES_PER_IDENTITY,
)
from pdsn.train.evaluate import DEFAULT_FARS, EVAL_IDENTITIES, EVAL_PAIRS, EVAL_SEED


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """Add train-stage0, train-pdsn, build-dictionary, finetune, evaluate, train-demo, train-occlusion and
    evaluate-occlusion."""
    stage0 = commands.add_parser("train-stage0", help="stage 0: train the recognition network (CosFace)")
    _data_options(stage0)
    stage0.add_argument(
        "--architecture", default="lresnet-ir-tiny", help="lresnet-ir-tiny (default) | lresnet10e-ir | lresnet50e-ir"
    )
    stage0.add_argument("--epochs", type=int, help="default 8 (as the demo model)")
    stage0.add_argument("--lr", type=float, help="default 0.1")
    stage0.add_argument("--batch-size", type=int, help="default 32")
    stage0.add_argument("--augment-occlusion", action="store_true", help="random occluders on half the images")
    stage0.add_argument("--out", type=Path, required=True, help="folder for model.pth and classifier.pth")
    stage0.set_defaults(run=_threaded(_train_stage0))

    pdsn = commands.add_parser("train-pdsn", help="stage 1: train the PDSN (mask generator) of grid cells")
    _model_options(pdsn)
    which = pdsn.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", type=int, help="one grid cell, 0..24 (row-major)")
    which.add_argument("--cells", help="'all' or comma-separated cell ids")
    _data_options(pdsn, pair_list=True)
    pdsn.add_argument(
        "--pairs-per-cell",
        type=int,
        default=DEFAULT_PAIRS_PER_CELL,
        help="(clean, occluded) pairs per cell drawn from the faces (default %(default)s)",
    )
    pdsn.add_argument("--epochs", type=int, help="default 6")
    pdsn.add_argument("--lr", type=float, help="default 0.05")
    pdsn.add_argument("--batch-size", type=int, help="default 64")
    pdsn.add_argument(
        "--l1-weight",
        type=float,
        help="weight of the masked features' L1 difference against the two CE terms (default 10, the paper's; "
        "scale it to the network's feature magnitudes, e.g. 1e5 for dlib's)",
    )
    pdsn.add_argument("--out", type=Path, required=True, help="folder for cell_JJ.pth checkpoints")
    pdsn.set_defaults(run=_threaded(_train_pdsn))

    dictionary = commands.add_parser(
        "build-dictionary", help="mean masks of the 25 PDSNs -> mean_mask.txt + dictionary"
    )
    dictionary.add_argument("--pdsn-dir", type=Path, required=True, help="folder of cell_00.pth .. cell_24.pth")
    _data_options(dictionary)
    dictionary.add_argument(
        "--pairs-per-cell",
        type=int,
        default=DEFAULT_PAIRS_PER_CELL,
        help="(clean, occluded) pairs per cell to average masks over (default %(default)s)",
    )
    dictionary.add_argument(
        "--tau", type=float, default=DEFAULT_TAU, help="fraction of each item discarded (default %(default)s)"
    )
    dictionary.add_argument("--out", type=Path, required=True)
    dictionary.set_defaults(run=_threaded(_build_dictionary))

    finetune = commands.add_parser("finetune", help="stage 2: fine-tune with occluded faces and their FDMs")
    _model_options(finetune)
    finetune.add_argument("--dictionary", type=Path, required=True, help="dictionary.npz, .npy or mean-mask folder")
    finetune.add_argument(
        "--tau",
        type=float,
        help=f"binarisation of a mean-mask folder (default {DEFAULT_TAU}; not for a binary dictionary)",
    )
    _data_options(finetune)
    finetune.add_argument("--epochs", type=int, help="default 3")
    finetune.add_argument("--lr", type=float, help="head and classifier (default 1e-3)")
    finetune.add_argument("--trunk-lr-scale", type=float, help="trunk lr = lr x this (default 0.1)")
    finetune.add_argument("--batch-size", type=int, help="default 32")
    finetune.add_argument("--out", type=Path, required=True, help="folder for model.pth and classifier.pth")
    finetune.set_defaults(run=_threaded(_finetune))

    evaluate = commands.add_parser("evaluate", help="10-fold verification accuracy and TAR@FAR, with and without FDM")
    evaluate.add_argument("--pairs", type=Path, help="LFW-format pairs.txt (default: synthetic pairs)")
    evaluate.add_argument("--root", type=Path, help="folder of the pairs' aligned 112x96 crops (name/name_NNNN.jpg)")
    evaluate.add_argument("--extension", default=".jpg", help="image file extension of --root (default .jpg)")
    evaluate.add_argument(
        "--num-pairs", type=int, default=EVAL_PAIRS, help="synthetic pairs, a multiple of 20 (default %(default)s)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=EVAL_SEED, help="synthetic identities and occluders (default %(default)s)"
    )
    evaluate.add_argument("--checkpoint", type=Path, help="PyTorch: reference-format recognition checkpoint")
    evaluate.add_argument("--dictionary", type=Path, help="PyTorch: dictionary.npz, .npy or mean-mask folder")
    evaluate.add_argument(
        "--tau",
        type=float,
        help=f"binarisation of a mean-mask folder (default {DEFAULT_TAU}; not for a binary dictionary)",
    )
    evaluate.add_argument("--bundle", type=Path, help="an exported bundle, run by the torch-free runtime")
    evaluate.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto", help="runtime backend (default: the fastest installed)"
    )
    evaluate.add_argument("--precision", default="fp32", help="comma-separated: fp32,fp16,int8 (one row group each)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--allow-ungated", action="store_true", help="also evaluate variants that missed their gate")
    evaluate.add_argument(
        "--far",
        default=",".join(map(str, DEFAULT_FARS)),
        help="comma-separated false accept rates (default %(default)s)",
    )
    evaluate.add_argument(
        "--identification",
        action="store_true",
        help="1:N instead: closed-set rank-1 and open-set TPIR@FPIR on synthetic identities with occluded probes",
    )
    evaluate.add_argument("--enrolled", type=int, default=100, help="identification: enrolled identities with probes")
    evaluate.add_argument("--distractors", type=int, default=100, help="identification: gallery-only identities")
    evaluate.add_argument("--unenrolled", type=int, default=50, help="identification: identities of non-mated probes")
    evaluate.add_argument("--fpir", default="0.1,0.01", help="identification: false positive identification rates")
    evaluate.add_argument("--report", type=Path, help="write the JSON report here")
    evaluate.add_argument("--markdown", type=Path, help="write the Markdown table here")
    evaluate.add_argument("--threads", type=int, help="torch intra-op threads (PyTorch rows)")
    evaluate.set_defaults(run=_threaded(_evaluate))

    demo = commands.add_parser("train-demo", help="the whole pipeline on synthetic faces: the demo model")
    demo.add_argument("--out", type=Path, required=True, help="new folder for the demo model")
    demo.add_argument("--work", type=Path, help="keep stage-0 and stage-1 checkpoints here (default: temporary)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--identities", type=int, help=f"synthetic training identities (default {SYNTHETIC_IDENTITIES})")
    demo.add_argument("--images-per-identity", type=int, help=f"default {SYNTHETIC_IMAGES_PER_IDENTITY}")
    demo.add_argument("--stage0-epochs", type=int, help="default 8")
    demo.add_argument("--stage1-epochs", type=int, help="default 6")
    demo.add_argument("--stage2-epochs", type=int, help="default 3")
    demo.add_argument("--eval-pairs", type=int, help=f"synthetic evaluation pairs (default {EVAL_PAIRS})")
    demo.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    demo.set_defaults(run=_train_demo)
    _occlusion_commands(commands)


def _occlusion_commands(commands: argparse._SubParsersAction) -> None:
    occlusion = commands.add_parser(
        "train-occlusion", help="train the occlusion estimator (which grid cells are occluded) and its thresholds"
    )
    occlusion.add_argument(
        "--data", default=SYNTHETIC, help="'synthetic' or a folder of aligned 112x96 crops (or 150x150 chips)"
    )
    occlusion.add_argument("--out", type=Path, required=True, help="folder for occlusion_estimator.pth and .json")
    occlusion.add_argument("--seed", type=int, default=0, help="faces, occluders, initialisation and shuffling")
    occlusion.add_argument("--epochs", type=int, help="default 16")
    occlusion.add_argument("--identities", type=int, help="synthetic training identities (default 400)")
    occlusion.add_argument("--images-per-identity", type=int, help="synthetic images each (default 5)")
    occlusion.add_argument("--validation-identities", type=int, help="synthetic held-out identities (default 120)")
    occlusion.add_argument("--batch-size", type=int, help="default 32")
    occlusion.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-3)")
    occlusion.add_argument("--clean-fraction", type=float, help="share of training faces left clean (default 0.25)")
    occlusion.add_argument(
        "--max-clean-false-alarm",
        type=float,
        help="thresholds are raised until at most this share of clean validation faces has a cell flagged "
        "(default 0.02)",
    )
    occlusion.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")
    occlusion.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    occlusion.set_defaults(run=_train_occlusion)

    evaluate = commands.add_parser(
        "evaluate-occlusion",
        help="the occlusion estimator: cell P/R/F1 per occluder, and verification/identification "
        "with no FDM, the estimator's FDM and the true cells' FDM",
    )
    evaluate.add_argument("--estimator", type=Path, help="occlusion_estimator.pth (default: the shipped one)")
    evaluate.add_argument("--checkpoint", type=Path, help="recognition checkpoint (default: the trained demo model)")
    evaluate.add_argument("--dictionary", type=Path, help="its dictionary (default: the demo model's)")
    evaluate.add_argument("--tau", type=float, help=f"binarisation of a mean-mask folder (default {DEFAULT_TAU})")
    evaluate.add_argument(
        "--num-pairs", type=int, default=EVAL_PAIRS, help="synthetic pairs, a multiple of 20 (default %(default)s)"
    )
    evaluate.add_argument(
        "--identities", type=int, default=EVAL_IDENTITIES, help="synthetic pair identities (default %(default)s)"
    )
    evaluate.add_argument("--seed", type=int, default=EVAL_SEED, help="pairs and occluders (default %(default)s)")
    evaluate.add_argument("--no-identification", action="store_true", help="skip the identification rows")
    evaluate.add_argument("--report", type=Path, help="write the JSON report here")
    evaluate.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    evaluate.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    evaluate.set_defaults(run=_threaded(_evaluate_occlusion))


def _data_options(parser: argparse.ArgumentParser, pair_list: bool = False) -> None:
    sources = "'synthetic', a folder of identity sub-folders" + (
        ", or a clean<TAB>occluded<TAB>label pair list" if pair_list else ""
    )
    parser.add_argument("--data", default=SYNTHETIC, help=f"{sources} (default synthetic)")
    if pair_list:
        parser.add_argument(
            "--root", type=Path, help="base folder of a pair list's relative paths (default: its folder)"
        )
    parser.add_argument(
        "--identities", type=int, default=SYNTHETIC_IDENTITIES, help="synthetic identities (default %(default)s)"
    )
    parser.add_argument(
        "--images-per-identity",
        type=int,
        default=SYNTHETIC_IMAGES_PER_IDENTITY,
        help="synthetic images each (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic faces, occluders and training")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="stage-0 model.pth (reference format)")
    parser.add_argument(
        "--classifier",
        type=Path,
        help="its CosFace classifier.pth (default: next to --checkpoint; an imported network without one gets "
        "its identities' centres)",
    )
    parser.add_argument("--architecture", help="require this architecture (default: inferred from the checkpoint)")


def _threaded(handler):
    """``handler`` run with ``--threads`` torch intra-op threads, torch's setting restored after."""

    def run(args: argparse.Namespace) -> int:
        if args.threads is None:  # leaves torch unimported where the handler needs none
            return handler(args)
        from pdsn.train.stage0 import torch_threads

        with torch_threads(args.threads):
            return handler(args)

    return run


def _config(default, **given):
    """``default`` (a config dataclass) with every setting given on the command line."""
    return dataclasses.replace(default, **{name: value for name, value in given.items() if value is not None})


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The command line's values of ``names`` (None where not given)."""
    return {name: getattr(args, name) for name in names}


def _faces(args: argparse.Namespace):
    from pdsn.train.data import load_labelled_faces

    return load_labelled_faces(args.data, args.identities, args.images_per_identity, args.seed)


def _load_model(args: argparse.Namespace):
    """The stage-0 network and its classifier from --checkpoint, --classifier, --architecture.

    A network published without a classifier (dlib's, from ``pdsn import dlib``) gets one made of its
    training identities' centres (``pdsn.train.centroids``) unless --classifier is given.
    """
    from pdsn.model.checkpoint import load_recognition_model
    from pdsn.model.dlib_resnet import DlibResNet
    from pdsn.model.network import architecture_by_name
    from pdsn.train.stage0 import CLASSIFIER_FILENAME, load_classifier

    architecture = architecture_by_name(args.architecture) if args.architecture else None
    model, _ = load_recognition_model(args.checkpoint, architecture)
    if isinstance(model, DlibResNet) and args.classifier is None:
        from pdsn.train.centroids import centroid_classifier

        return model, centroid_classifier(model, _faces(args))
    classifier_path = args.classifier or args.checkpoint.parent / CLASSIFIER_FILENAME
    if not classifier_path.is_file():
        raise FileNotFoundError(
            f"classifier {classifier_path} does not exist; pass --classifier, the classifier.pth "
            f"saved with {args.checkpoint}"
        )
    return model, load_classifier(classifier_path, model.architecture.embedding_size)


def _parse_cells(args: argparse.Namespace) -> list[int]:
    from pdsn.model.grid import NUM_CELLS, check_cell_id, validate_cell_ids

    if args.cell is not None:
        return [check_cell_id(args.cell, "--cell")]
    if args.cells.strip().lower() == "all":
        return list(range(NUM_CELLS))
    try:
        cells = [int(part) for part in args.cells.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--cells {args.cells!r}: expected 'all' or comma-separated cell ids 0..24") from None
    return validate_cell_ids(cells, "--cells")


def _train_stage0(args: argparse.Namespace) -> int:
    from pdsn.model.network import architecture_by_name
    from pdsn.train.demo_model import DemoConfig
    from pdsn.train.stage0 import save_stage0, train_recognition

    architecture = architecture_by_name(args.architecture)
    config = _config(DemoConfig(), stage0_epochs=args.epochs, stage0_lr=args.lr, stage0_batch_size=args.batch_size)
    faces = _faces(args)
    model, classifier, _ = train_recognition(
        architecture,
        faces.images,
        faces.labels,
        epochs=config.stage0_epochs,
        batch_size=config.stage0_batch_size,
        lr=config.stage0_lr,
        seed=args.seed,
        augment_occlusion=args.augment_occlusion,
        progress=args.verbose,
    )
    model_path, classifier_path = save_stage0(args.out, model, classifier, epoch=config.stage0_epochs)
    print(
        f"wrote {model_path} and {classifier_path} ({architecture.name}, {faces.num_classes} identities, "
        f"{len(faces.labels)} images from {faces.source})"
    )
    return 0


def _train_pdsn(args: argparse.Namespace) -> int:
    from pdsn.train.features import CellFeatureCache, pair_features
    from pdsn.train.stage1 import Stage1Config, checkpoint_name, save_pdsn, train_cells, train_pdsn

    cells = _parse_cells(args)
    model, classifier = _load_model(args)
    config = _config(Stage1Config(), **_given(args, "epochs", "batch_size", "lr", "l1_weight", "seed"))
    if Path(args.data).is_file() or Path(args.data).suffix == ".txt":
        from pdsn.train.data import read_pair_list

        if len(cells) != 1:
            raise ValueError(
                f"a pair list holds the occluded images of one cell, but {len(cells)} cells were asked "
                f"for; pass --cell J with the list of cell J's pairs"
            )
        result = train_pdsn(
            model,
            classifier,
            pair_features(model, read_pair_list(args.data, args.root)),
            cells[0],
            config,
            progress=args.verbose,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        save_pdsn(args.out / checkpoint_name(cells[0]), result)
        histories = {cells[0]: result.history}
    else:
        cache = CellFeatureCache(model, _faces(args), seed=args.seed, pairs_per_cell=args.pairs_per_cell)
        histories = train_cells(model, classifier, cache, cells, args.out, config, progress=args.verbose)
    for cell, history in histories.items():
        first, last = history[0], history[-1]
        print(
            f"cell {cell:2d}: loss {first.loss:.4f} -> {last.loss:.4f} (L1 {first.l1:.4f} -> {last.l1:.4f}), "
            f"mean mask {last.mask_mean:.3f}: {args.out / checkpoint_name(cell)}"
        )
    return 0


def _build_dictionary(args: argparse.Namespace) -> int:
    from pdsn.train.dictionary_extraction import extract_mean_masks, recognition_model_of, write_dictionary
    from pdsn.train.features import CellFeatureCache
    from pdsn.train.stage1 import find_pdsn_checkpoints

    checkpoints = find_pdsn_checkpoints(args.pdsn_dir)
    faces = _faces(args)
    cache = CellFeatureCache(
        recognition_model_of(args.pdsn_dir), faces, seed=args.seed, pairs_per_cell=args.pairs_per_cell
    )
    mean_masks = extract_mean_masks(checkpoints, cache, progress=args.verbose)
    files = write_dictionary(args.out, mean_masks, args.tau, source=faces.source)
    keep = 1.0 - files.tau
    print(
        f"wrote {len(files.mean_masks)} mean_mask.txt files ({mean_masks[0].size} lines each, C,H,W order) "
        f"under {files.mean_masks[0].parent.parent} and the binary dictionary {files.dictionary} "
        f"(tau {files.tau}: {keep:.0%} of each item kept)"
    )
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from pdsn.model.dictionary import build_dictionary
    from pdsn.train.stage0 import save_stage0
    from pdsn.train.stage2 import Stage2Config, finetune

    model, classifier = _load_model(args)
    dictionary = build_dictionary(args.dictionary, tau=args.tau, feature_shape=model.architecture.feature_shape)
    config = _config(Stage2Config(), **_given(args, "epochs", "batch_size", "lr", "trunk_lr_scale", "seed"))
    tuned, tuned_classifier, history = finetune(model, classifier, dictionary, _faces(args), config, args.verbose)
    model_path, classifier_path = save_stage0(args.out, tuned, tuned_classifier, epoch=config.epochs)
    print(f"stage 2: loss {history[0].loss:.4f} -> {history[-1].loss:.4f}; wrote {model_path} and {classifier_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.identification:
        return _evaluate_identification(args)
    from pdsn.train.evaluate import (
        BundleEmbedder,
        evaluation_report,
        format_table,
        lfw_pairs,
        occlude_seconds,
        synthetic_pairs,
        write_report,
    )

    if args.checkpoint is None and args.bundle is None:
        raise ValueError("nothing to evaluate: pass --checkpoint (with --dictionary) and/or --bundle")
    if (args.pairs is None) != (args.root is None):
        raise ValueError("--pairs and --root go together: an LFW pairs.txt and the folder of its aligned crops")
    fars = _fars(args.far)
    pairs = (
        lfw_pairs(args.pairs, args.root, args.extension)
        if args.pairs is not None
        else synthetic_pairs(args.num_pairs, args.seed)
    )
    occluded = occlude_seconds(pairs, args.seed)
    embedders = []
    if args.checkpoint is not None:
        embedders.append(_torch_embedder(args))
    try:
        if args.bundle is not None:
            for precision in (p.strip() for p in args.precision.split(",") if p.strip()):
                embedders.append(
                    BundleEmbedder.open(args.bundle, args.backend, precision, args.device, args.allow_ungated)
                )
        report = evaluation_report(embedders, pairs, occluded, fars)
    finally:
        for embedder in embedders:
            if isinstance(embedder, BundleEmbedder):
                embedder.close()
    print(
        f"{report['pairs']['count']} pairs from {report['pairs']['source']}; occluded protocol: "
        f"{report['occlusion']['protocol']}\n"
    )
    print(format_table(report))
    if args.report is not None or args.markdown is not None:
        write_report(report, args.report or args.markdown.with_suffix(".json"), args.markdown)
    return 0


def _evaluate_identification(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from pdsn.train.evaluate import BundleEmbedder
    from pdsn.train.identification import (
        brute_force_scores,
        format_identification_table,
        gallery_scores,
        identification_report,
        synthetic_identification,
    )

    if args.checkpoint is None and args.bundle is None:
        raise ValueError("nothing to evaluate: pass --checkpoint (with --dictionary) and/or --bundle")
    if args.pairs is not None:
        raise ValueError("--identification evaluates synthetic identities; --pairs is for verification")
    data = synthetic_identification(args.enrolled, args.distractors, args.unenrolled, seed=args.seed)
    rows = []
    if args.checkpoint is not None:
        torch_model = _torch_embedder(args)
        rows += [
            (torch_model.name, "re-embedding", fdm, brute_force_scores(torch_model, data, fdm)) for fdm in (False, True)
        ]
    for precision in (p.strip() for p in args.precision.split(",") if p.strip()) if args.bundle else ():
        embedder = BundleEmbedder.open(args.bundle, args.backend, precision, args.device, args.allow_ungated)
        with embedder.recognizer, tempfile.TemporaryDirectory(prefix="pdsn-identify-") as folder:
            for fdm in (False, True):
                rows.append((embedder.name, "re-embedding", fdm, brute_force_scores(embedder, data, fdm)))
                scores = gallery_scores(embedder.recognizer, data, fdm, Path(folder) / "gallery.db")
                rows.append((embedder.name, "Gallery", fdm, scores))
    report = identification_report(rows, data, _fars(args.fpir))
    described = report["data"]
    print(
        f"{described['gallery']} gallery identities ({described['distractors']} distractors), "
        f"{described['mated_probes']} mated and {described['non_mated_probes']} non-mated probes, every probe "
        f"occluded ({described['occluders']}); SYNTHETIC faces\n"
    )
    table = format_identification_table(report)
    print(table)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(f"# Identification\n\n{report['protocol']}.\n\n{table}\n", encoding="utf-8")
    return 0


def _torch_embedder(args: argparse.Namespace):
    from pdsn.model.checkpoint import load_recognition_model
    from pdsn.model.dictionary import build_dictionary
    from pdsn.train.evaluate import TorchEmbedder

    if args.dictionary is None:
        raise ValueError(
            "--checkpoint needs --dictionary (dictionary.npz, .npy or a mean-mask folder) for the FDM rows"
        )
    model, _ = load_recognition_model(args.checkpoint)
    dictionary = build_dictionary(args.dictionary, tau=args.tau, feature_shape=model.architecture.feature_shape)
    return TorchEmbedder(model, dictionary, "pytorch fp32")


def _fars(text: str) -> tuple[float, ...]:
    try:
        fars = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--far {text!r}: expected comma-separated rates in (0, 1), e.g. 0.1,0.01") from None
    if not fars or not all(0.0 < far < 1.0 for far in fars):
        raise ValueError(f"--far {text!r}: every false accept rate must be in (0, 1), e.g. 0.1,0.01")
    return fars


def _train_demo(args: argparse.Namespace) -> int:
    from pdsn.train.demo_model import DemoConfig, train_demo

    defaults = DemoConfig()
    config = _config(
        defaults,
        seed=args.seed,
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        stage0_epochs=args.stage0_epochs,
        stage1=_config(defaults.stage1, epochs=args.stage1_epochs),
        stage2=_config(defaults.stage2, epochs=args.stage2_epochs),
        eval_pairs=args.eval_pairs,
        threads=args.threads,
    )
    train_demo(args.out, config, work=args.work)
    return 0


def _train_occlusion(args: argparse.Namespace) -> int:
    from pdsn.train.occlusion_estimator import EstimatorConfig, describe, train_occlusion

    config = _config(
        EstimatorConfig(),
        data=str(args.data),
        seed=args.seed,
        epochs=args.epochs,
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        validation_identities=args.validation_identities,
        batch_size=args.batch_size,
        lr=args.lr,
        clean_fraction=args.clean_fraction,
        max_clean_false_alarm=args.max_clean_false_alarm,
        threads=args.threads,
    )
    print(describe(train_occlusion(args.out, config, progress=not args.quiet)))
    return 0


def _evaluate_occlusion(args: argparse.Namespace) -> int:
    import json

    from pdsn.model.bundle_format import sha256_file
    from pdsn.model.checkpoint import load_recognition_model
    from pdsn.model.demo_weights import TRAINED_DEMO_CHECKPOINT, TRAINED_DEMO_DICTIONARY
    from pdsn.model.dictionary import build_dictionary
    from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR, load_estimator
    from pdsn.train.estimator_evaluation import evaluate_estimator, format_report
    from pdsn.train.evaluate import TorchEmbedder

    if (args.checkpoint is None) != (args.dictionary is None):
        raise ValueError(
            "--checkpoint and --dictionary go together (a recognition model and its mask dictionary); "
            "pass both, or neither for the trained demo model"
        )
    model, _ = load_recognition_model(args.checkpoint or TRAINED_DEMO_CHECKPOINT)
    dictionary = build_dictionary(
        args.dictionary or TRAINED_DEMO_DICTIONARY, tau=args.tau, feature_shape=model.architecture.feature_shape
    )
    estimator_path = args.estimator or SHIPPED_ESTIMATOR
    estimator = load_estimator(estimator_path)
    report = evaluate_estimator(
        estimator,
        TorchEmbedder(model, dictionary, "pytorch fp32"),
        num_pairs=args.num_pairs,
        seed=args.seed,
        identities=args.identities,
        identification=not args.no_identification,
    )
    # Binds the report to these weights, so `pdsn add-estimator` puts it only beside this estimator.
    report["estimator_sha256"] = sha256_file(estimator_path)
    text = format_report(report)
    print(text)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(f"# Occlusion estimator (SYNTHETIC)\n\n{text}\n", encoding="utf-8")
    return 0
