"""The ``pdsn`` command. Subcommands import what they need lazily: runtime ones never load torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pdsn.errors import PdsnError

# What a user can cause and fix: the errors pdsn raises on purpose (PdsnError: a missed gate, a backend
# not installed, a bad argument, ...), and bad values or files. Anything else, a bare RuntimeError or a
# TypeError included, is a bug and surfaces as a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, TimeoutError)


# A module of pdsn.commands, its registering function, and the commands that function registers.
Registration = tuple[str, str, tuple[str, ...]]
# Every registration, in ``pdsn --help``'s order (tests/test_cli_layout.py holds the names to what each function
# registers). ``pdsn NAME`` imports NAME's module alone, so a command needs only what its own module imports:
# ``pdsn gpu-check`` runs where the runtime's libraries (Pillow, ONNX Runtime) are missing (scripts/gpu-check.sh).
COMMANDS: tuple[Registration, ...] = (
    ("bundle", "add_bundle_commands", ("export", "quantize", "build", "verify", "add-estimator")),
    ("bench", "add_bench_commands", ("bench", "bench-ann-choice", "bench-openvino-hints")),
    ("gpu_check", "add_gpu_check_command", ("gpu-check",)),
    ("demo", "add_demo_command", ("demo",)),
    ("faces", "add_face_commands", ("detect", "embed", "compare")),
    ("detector", "add_detector_commands", ("convert-mtcnn", "add-detector")),
    ("model_import", "add_import_command", ("import",)),
    ("gallery", "add_gallery_commands", ("gallery",)),
    ("serve", "add_serve_command", ("serve", "bench-serve")),
    ("triton", "add_triton_commands", ("triton-repo", "bench-triton")),
    (
        "training",
        "add_training_commands",
        (
            "train-stage0",
            "train-pdsn",
            "build-dictionary",
            "finetune",
            "evaluate",
            "train-demo",
            "train-occlusion",
            "evaluate-occlusion",
        ),
    ),
    ("real_faces", "add_real_face_commands", ("real-faces", "evaluate-real")),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except Exception as exc:
        if args.verbose or not _is_user_error(exc):
            raise
        print(f"pdsn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: Exception) -> bool:
    return isinstance(exc, (PdsnError, *_USER_ERRORS))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` (default: the command line) parsed by the ``pdsn`` parser; a bad argument exits 2 with usage."""
    argv = sys.argv[1:] if argv is None else argv
    return build_parser(_needed(argv)).parse_args(argv)


def build_parser(registrations: tuple[Registration, ...] = COMMANDS) -> argparse.ArgumentParser:
    """The ``pdsn`` parser with the commands of ``registrations`` (default: every command)."""
    parser = argparse.ArgumentParser(prog="pdsn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for module, register, _ in registrations:
        getattr(importlib.import_module(f"pdsn.commands.{module}"), register)(commands)
    return parser


def _needed(argv: list[str]) -> tuple[Registration, ...]:
    """The registration of the command ``argv`` names; every one for help, or no command or an unknown one."""
    for arg in argv:
        if arg in ("-h", "--help"):
            break
        if not arg.startswith("-"):
            return tuple(entry for entry in COMMANDS if arg in entry[2]) or COMMANDS
    return COMMANDS


if __name__ == "__main__":
    sys.exit(main())
