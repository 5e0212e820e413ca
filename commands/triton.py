"""``pdsn triton-repo``: write a Triton Inference Server model repository from a bundle; ``pdsn bench-triton``:
the in-process runtime against the same model behind a local Triton server."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pdsn.commands.arguments import positive, real


def add_triton_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn triton-repo`` and ``pdsn bench-triton``."""
    from pdsn.triton_repo.repository import DEFAULT_QUEUE_DELAY_US, KINDS, PRECISIONS, PYTHON_BACKENDS

    repo = commands.add_parser(
        "triton-repo", help="write a Triton model repository (onnxruntime, tensorrt or python backend) from a bundle"
    )
    repo.add_argument("--bundle", type=Path, required=True)
    repo.add_argument("--out", type=Path, required=True, help="the model repository folder (created if missing)")
    repo.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the variant to serve (default fp32)")
    repo.add_argument(
        "--kind",
        choices=KINDS,
        default="onnxruntime",
        help="onnxruntime_onnx (dictionary embedded), the bundle's tensorrt_plan engine, or pdsn.runtime on the "
        "python backend (default onnxruntime)",
    )
    repo.add_argument(
        "--model-name", default="pdsn", help="the model's name; its trunk is NAME_features (default pdsn)"
    )
    repo.add_argument(
        "--max-batch", type=positive, help="max_batch_size (default 64; tensorrt: the engine profile's maximum)"
    )
    repo.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_QUEUE_DELAY_US,
        help=f"how long Triton's dynamic batcher waits for a batch to fill (default {DEFAULT_QUEUE_DELAY_US})",
    )
    repo.add_argument("--instances", type=positive, default=1, help="model instances (instance_group count)")
    repo.add_argument("--cpu", action="store_true", help="onnxruntime kind: KIND_CPU instances instead of KIND_GPU")
    repo.add_argument(
        "--python-backend",
        choices=PYTHON_BACKENDS,
        default="onnxruntime",
        help="python kind: the pdsn runtime backend inside Triton (default onnxruntime)",
    )
    repo.add_argument(
        "--python-device", choices=("cpu", "cuda"), default="cpu", help="python kind: the runtime's device"
    )
    repo.set_defaults(run=_triton_repo)

    bench = commands.add_parser(
        "bench-triton", help="in-process runtime against a local Triton server (python kind), over gRPC and HTTP"
    )
    bench.add_argument("--bundle", type=Path, help="default: the demo model, exported into --work")
    bench.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the variant served (default fp32)")
    bench.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pdsn-bench-triton",
        help="for the bundle, the repository and the server's log",
    )
    bench.add_argument(
        "--env", type=Path, default=Path(".triton-env"), help="the server's environment (made once, then reused)"
    )
    bench.add_argument("--seconds", type=real("seconds", zero=False), default=8.0, help="window per row (default 8)")
    bench.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON and Markdown")
    bench.add_argument("--name", default="cpu-triton-demo-model", help="file name stem of the results")
    bench.set_defaults(run=_bench_triton)


def _triton_repo(args: argparse.Namespace) -> int:
    from pdsn.triton_repo.repository import RepositoryRequest, write_repository

    folders = write_repository(
        RepositoryRequest(
            bundle=args.bundle,
            out=args.out,
            precision=args.precision,
            kind=args.kind,
            model_name=args.model_name,
            max_batch=args.max_batch,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            gpu=not args.cpu,
            backend=args.python_backend,
            device=args.python_device,
        )
    )
    print(f"wrote {', '.join(f.name for f in folders)} into {args.out} (see {args.out / 'README.md'})")
    return 0


def _bench_triton(args: argparse.Namespace) -> int:
    from pdsn.bench.triton import markdown, run
    from pdsn.commands.bench import save_and_print

    result = run(args.bundle, args.work.resolve(), args.env.resolve(), args.precision, args.seconds)
    return save_and_print(result, markdown(result), args.out, args.name)
