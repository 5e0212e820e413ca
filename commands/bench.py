"""``pdsn bench``: speed against the peers measured in the same run (backends, a gallery, photos);
``pdsn bench-ann-choice`` and ``pdsn bench-openvino-hints``: the measurements behind two design choices."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdsn.commands.arguments import delays, names, nonnegative, numbers, positive, real


def add_bench_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn bench``, ``pdsn bench-ann-choice`` and ``pdsn bench-openvino-hints``."""
    bench = commands.add_parser("bench", help="throughput and latency of every backend/precision/batch, side by side")
    bench.add_argument(
        "--bundle", type=Path, help="bundle to measure (default: seeded weights of --architecture, prepared in --work)"
    )
    bench.add_argument("--work", type=Path, default=Path("pdsn-bench-bundle"), help="where the timing bundle lives")
    bench.add_argument("--architecture", default="lresnet50e-ir", help="the timing bundle's architecture")
    bench.add_argument("--backends", type=names, default=("onnxruntime", "openvino"))
    bench.add_argument("--precisions", type=names, default=("fp32", "int8"))
    bench.add_argument("--batches", type=numbers, default=(1, 8, 32))
    bench.add_argument("--seconds", type=float, default=3.0, help="minimum measuring window per configuration")
    bench.add_argument("--no-reference", action="store_true", help="skip the PyTorch eager FP32 baseline")
    bench.add_argument(
        "--clients",
        type=numbers,
        default=(1, 2, 4, 8, 16),
        help="concurrency sweep: closed-loop single-face clients (default 1,2,4,8,16)",
    )
    bench.add_argument(
        "--delays",
        type=delays,
        default=(0.0, 2.0, 10.0),
        help="concurrency sweep: the batcher's max_delay_ms values (default 0,2,10)",
    )
    bench.add_argument("--max-batch", type=int, default=8, help="concurrency sweep: the batcher's max_batch")
    bench.add_argument("--sweep-seconds", type=float, default=5.0, help="measuring window per sweep point")
    bench.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep")
    bench.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON and Markdown")
    bench.add_argument("--name", default="cpu", help="file name stem of the results")
    bench.add_argument(
        "--gallery",
        type=numbers,
        help="instead: 1:N identification against galleries of these sizes, e.g. 1000,10000,100000 (seeded features)",
    )
    bench.add_argument(
        "--store",
        choices=("memory", "pgvector"),
        default="memory",
        help="--gallery: the in-process gallery (default), or pgvector (searched inside an embedded PostgreSQL "
        "with pgvector, beside the in-process gallery; default bundle: the default model's)",
    )
    bench.add_argument("--hnsw-m", type=int, default=16, help="--store pgvector: HNSW links per node (default 16)")
    bench.add_argument(
        "--hnsw-ef-construction", type=int, default=64, help="--store pgvector: HNSW build candidates (default 64)"
    )
    bench.add_argument(
        "--ef-search",
        type=numbers,
        default=(100, 400, 1000),
        help="--store pgvector: the HNSW search widths swept, recall against time (default 100,400,1000)",
    )
    bench.add_argument(
        "--graphs",
        choices=("all", "searched"),
        default="all",
        help="--store pgvector: build every warm pattern's HNSW graph (default), or the searched one's only "
        "(sunglasses: a 1,000,000-face graph takes about 40 minutes on 2 cores, and a sunglasses search reads no other)",
    )
    bench.add_argument(
        "--compare-pages",
        type=nonnegative,
        default=0,
        metavar="ROUNDS",
        help="--store pgvector: after the sweep, time the first --ef-search with the server's shared buffers on small "
        "and on huge pages, alternating ROUNDS times in one window (huge pages must be reserved; default 0: not)",
    )
    bench.add_argument(
        "--photos",
        action="store_true",
        help="instead: face detection on 640x480 and 1280x720 frames beside facenet-pytorch's MTCNN, and the whole "
        "photo path (decode, detect, align, embed, identify); default bundle: the default model (dlib's)",
    )
    bench.add_argument("--min-face", type=float, default=40.0, help="--photos: smallest face side, px (default 40)")
    bench.set_defaults(run=_bench)

    ann = commands.add_parser(
        "bench-ann-choice",
        help="search over a gallery's cached pattern: exact, quantised flat (FAISS) and HNSW (FAISS, usearch)",
    )
    ann.add_argument(
        "--sizes",
        type=numbers,
        default=(10_000, 100_000),
        help="faces per synthetic gallery, each at least 200 (default 10000,100000)",
    )
    ann.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON and Markdown")
    ann.add_argument("--name", default="cpu-ann-choice", help="file name stem of the results")
    ann.set_defaults(run=_bench_ann_choice)

    hints = commands.add_parser(
        "bench-openvino-hints", help="OpenVINO's latency hint against its throughput hint, under the batcher"
    )
    hints.add_argument(
        "--bundle", type=Path, default=Path("pdsn-bench-bundle"), help="the timing bundle (default pdsn-bench-bundle)"
    )
    hints.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default="int8", help="the variant measured (default int8)"
    )
    hints.add_argument(
        "--clients", type=numbers, default=(1, 4, 8, 16), help="closed-loop single-face clients (default 1,4,8,16)"
    )
    hints.add_argument("--max-batch", type=positive, default=8, help="the batcher's max_batch (default 8)")
    hints.add_argument(
        "--delay-ms", type=real("milliseconds"), default=2.0, help="the batcher's max_delay_ms (default 2)"
    )
    hints.add_argument("--seconds", type=real("seconds", zero=False), default=6.0, help="window per point (default 6)")
    hints.add_argument("--rounds", type=positive, default=2, help="rounds, alternating the hints (default 2)")
    hints.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON and Markdown")
    hints.add_argument("--name", default="cpu-openvino-hints", help="file name stem of the results")
    hints.set_defaults(run=_bench_openvino_hints)


def _bench(args: argparse.Namespace) -> int:
    from pdsn.bench.concurrency import SweepConfig
    from pdsn.bench.report import terminal_table, write_results
    from pdsn.bench.runner import BenchConfig, run_benchmark

    bundle = args.bundle
    if args.photos:
        return _bench_photos(bundle, args)
    if args.gallery and args.store == "pgvector":
        return _bench_vector_gallery(bundle, args)
    if bundle is None:
        from pdsn.bench.timing_bundle import prepare_timing_bundle

        print(f"preparing the timing bundle ({args.architecture}, seeded weights) in {args.work} (reused when present)")
        prepare_timing_bundle(args.work, args.architecture, reuse=True)
        bundle = args.work
    if args.gallery:
        return _bench_gallery(bundle, args)
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    sweep = None if args.no_sweep else SweepConfig(args.clients, args.delays, args.max_batch, args.sweep_seconds)
    config = BenchConfig(
        backends=args.backends,
        precisions=args.precisions,
        batches=args.batches,
        reference=not args.no_reference,
        seconds=args.seconds,
        sweep=sweep,
    )
    result = run_benchmark(bundle, config)
    print(terminal_table(result))
    for path in write_results(result, args.out, args.name):
        print(f"wrote {path}")
    return 0


def _bench_gallery(bundle: Path, args: argparse.Namespace) -> int:
    from pdsn.bench.gallery import GalleryBenchConfig, gallery_markdown, run_gallery_benchmark

    work = args.work.parent / f"{args.work.name}-galleries"  # beside the bundle, never inside it
    result = run_gallery_benchmark(bundle, GalleryBenchConfig(sizes=args.gallery), work)
    return save_and_print(result, gallery_markdown(result), args.out, f"{args.name}-gallery")


def _bench_vector_gallery(bundle: Path | None, args: argparse.Namespace) -> int:
    from pdsn.bench.gallery_pgvector import VectorBenchConfig, run_vector_benchmark, vector_markdown

    work = args.work.parent / f"{args.work.name}-galleries"  # beside the timing bundle, never inside it
    if bundle is None:
        bundle = _default_bundle(work)
    config = VectorBenchConfig(
        sizes=args.gallery,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction,
        ef_search=args.ef_search,
        graphs=args.graphs,
        page_rounds=args.compare_pages,
    )
    result = run_vector_benchmark(bundle, config, work)
    return save_and_print(result, vector_markdown(result), args.out, f"{args.name}-pgvector")


def _default_bundle(work: Path) -> Path:
    """The default model exported under ``work`` (reused when there)."""
    from pdsn.export.bundle_writer import ExportRequest, export_bundle

    bundle = work / "default-bundle"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting the default model to {bundle}")
        work.mkdir(parents=True, exist_ok=True)
        export_bundle(ExportRequest(out=bundle))
    return bundle


def _bench_photos(bundle: Path | None, args: argparse.Namespace) -> int:
    from pdsn.bench.photos import PhotoBenchConfig, photos_markdown, run_photo_benchmark

    work = args.work.parent / f"{args.work.name}-photos"  # beside the timing bundle, never inside it
    if bundle is None:
        bundle = _default_bundle(work)
    config = PhotoBenchConfig(min_face=args.min_face, backends=args.backends, seconds=args.seconds)
    result = run_photo_benchmark(bundle, config, work)
    return save_and_print(result, photos_markdown(result), args.out, f"{args.name}-photos")


def _bench_ann_choice(args: argparse.Namespace) -> int:
    from pdsn.bench.ann_choice import markdown, run

    result = run(args.sizes)
    return save_and_print(result, markdown(result), args.out, args.name)


def _bench_openvino_hints(args: argparse.Namespace) -> int:
    from pdsn.bench.concurrency import SweepConfig
    from pdsn.bench.openvino_hints import compare_hints, markdown

    config = SweepConfig(delays_ms=(args.delay_ms,), max_batch=args.max_batch, seconds=args.seconds)
    result = compare_hints(args.bundle, args.precision, args.clients, config, args.rounds)
    return save_and_print(result, markdown(result), args.out, args.name)


def save_and_print(result: dict, text: str, out: Path, stem: str) -> int:
    """Save the result as ``stem`` JSON and Markdown under ``out`` and print the Markdown."""
    from pdsn.bench.report import save_report

    for path in save_report(result, text, out, stem):
        print(f"wrote {path}")
    print(text)
    return 0
