"""``pdsn gpu-check``: PyTorch and the fused FDM kernel on one GPU, side by side (``pdsn.bench.gpu_check``).

Its registration imports nothing beyond the standard library: scripts/gpu-check.sh runs it on a GPU machine that
has torch, numpy and cuda-python, but not necessarily the runtime's libraries (Pillow, ONNX Runtime).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdsn.commands.arguments import numbers, real


def add_gpu_check_command(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn gpu-check``."""
    check = commands.add_parser(
        "gpu-check",
        help="PyTorch eager FP32/FP16, torch.compile and the fused FDM kernel on one GPU; or judge a gpu test report",
    )
    check.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for gpu-<device>.json and .md")
    check.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    check.add_argument("--smoke", action="store_true", help="tiny architecture, batches 1 and 2, short windows")
    check.add_argument("--batches", type=numbers, help="batch sizes (default 1,8,64,256; 1,2 with --smoke)")
    check.add_argument("--seconds", type=real("seconds", zero=False), help="minimum measuring window per row")
    check.add_argument("--compile-backend", help="torch.compile backend (default inductor; eager with --smoke)")
    check.add_argument(
        "--compile-budget-s",
        type=real("seconds"),
        help="after the first batch, no new torch.compile starts after this long (default 120; 0 with --smoke)",
    )
    check.add_argument(
        "--check-test-report",
        type=Path,
        metavar="JUNIT_XML",
        help="instead: judge a junit report of `pytest -m gpu` (a skipped kernel test fails it)",
    )
    check.set_defaults(run=_gpu_check)


def _gpu_check(args: argparse.Namespace) -> int:
    from pdsn.bench.gpu_check import check_config, check_test_report, run_check

    if args.check_test_report is not None:
        return check_test_report(args.check_test_report)
    config = check_config(
        args.device, args.smoke, args.batches, args.seconds, args.compile_backend, args.compile_budget_s
    )
    return run_check(config, args.out)
