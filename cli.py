"""The ``pdsn`` command. Subcommands import what they need lazily: runtime ones never load torch."""

from __future__ import annotations

import argparse
import logging
import sys

from pdsn.errors import PdsnError

# What a user can cause and fix: the errors pdsn raises on purpose (PdsnError: a missed gate, a backend
# not installed, a bad argument, ...), and bad values or files. Anything else, a bare RuntimeError or a
# TypeError included, is a bug and surfaces as a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, TimeoutError)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdsn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    from pdsn.commands.bench import add_bench_command
    from pdsn.commands.bundle import add_bundle_commands
    from pdsn.commands.demo import add_demo_command
    from pdsn.commands.detector import add_detector_commands
    from pdsn.commands.faces import add_face_commands
    from pdsn.commands.gallery import add_gallery_commands
    from pdsn.commands.model_import import add_import_command
    from pdsn.commands.serve import add_serve_command
    from pdsn.commands.training import add_training_commands
    from pdsn.commands.triton import add_triton_commands

    add_bundle_commands(commands)
    add_bench_command(commands)
    add_demo_command(commands)
    add_face_commands(commands)
    add_detector_commands(commands)
    add_import_command(commands)
    add_gallery_commands(commands)
    add_serve_command(commands)
    add_triton_commands(commands)

    add_training_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
