"""The `pdsn` parser: every command registered by its module under commands/, as `COMMANDS` lists them, and a
named command's module imported alone."""

from __future__ import annotations

import argparse
import importlib

import pytest

from pdsn.cli import COMMANDS, _needed, build_parser


def _registered(module: str, register: str) -> list[str]:
    commands = argparse.ArgumentParser().add_subparsers()
    getattr(importlib.import_module(f"pdsn.commands.{module}"), register)(commands)
    return list(commands.choices)


@pytest.mark.parametrize(("module", "register", "names"), COMMANDS, ids=[entry[0] for entry in COMMANDS])
def test_each_module_registers_the_commands_listed_for_it(module, register, names):
    assert _registered(module, register) == list(names)


def test_no_command_is_listed_twice_and_the_full_parser_has_them_all():
    listed = [name for _, _, names in COMMANDS for name in names]
    assert len(listed) == len(set(listed))
    (subparsers,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == listed


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["gpu-check", "--smoke"], ["gpu_check"]),
        (["-v", "bench-triton"], ["triton"]),
        (["gallery", "list", "--gallery", "g.db"], ["gallery"]),
        (["--help"], [entry[0] for entry in COMMANDS]),
        (["-h", "gpu-check"], [entry[0] for entry in COMMANDS]),
        ([], [entry[0] for entry in COMMANDS]),
        (["no-such-command"], [entry[0] for entry in COMMANDS]),
    ],
)
def test_only_the_named_commands_module_is_registered(argv, modules):
    assert [entry[0] for entry in _needed(argv)] == modules


def test_an_unknown_command_is_refused_with_every_command_listed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(_needed(["bench-gpu"])).parse_args(["bench-gpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'bench-gpu'" in error and "gpu-check" in error and "bench-ann-choice" in error
