"""The engine builder's data-centre TensorRT calls, type-checked with mypy against ``tensorrt-stubs``.

Data-centre TensorRT cannot be installed here, so this is what checks that every call the builder
makes exists with that signature. Two facts shape the harness: the stub wheel puts ``tensorrt/``
beside the packages without a ``py.typed`` marker (mypy then skips it), so the stubs are copied
onto ``MYPYPATH``; and its generated ``tensorrt.pyi`` has lines mypy cannot parse (a parameter
named ``in``, a parameter without a default after defaulted ones), which the copy repairs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("pdsn.engines.flavour", "pdsn.engines.build")
MYPY_CONFIG = """\
[mypy]
follow_imports = silent
warn_unused_ignores = True

[mypy-tensorrt_libs.*,cuda.*]
ignore_missing_imports = True

[mypy-tensorrt,tensorrt_bindings.*]
ignore_errors = True
"""


def repair_stub(text: str) -> str:
    """Make generated stub lines valid Python: rename ``in`` parameters, default late parameters."""
    text = re.sub(r"\bin: ", "in_: ", text)
    return "\n".join(_default_late_parameters(line) for line in text.splitlines()) + "\n"


def _default_late_parameters(line: str) -> str:
    match = re.fullmatch(r"(\s*def \w+\()(.*)(\) -> .*)", line)
    if not match or "=" not in match.group(2):
        return line
    parameters, seen_default = [], False
    for parameter in _split_top_level(match.group(2)):
        seen_default = seen_default or "=" in parameter
        parameters.append(
            parameter if "=" in parameter or not seen_default or parameter.startswith("*") else f"{parameter} = ..."
        )
    return match.group(1) + ", ".join(parameters) + match.group(3)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(" and 1) or (char in "])" and -1) or 0
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()] if current.strip() else parts


def _stub_files() -> list[tuple[Path, str]]:
    try:
        distribution = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    return [(Path(distribution.locate_file(f)), str(f)) for f in distribution.files or [] if str(f).endswith(".pyi")]


def test_repair_stub_fixes_what_mypy_cannot_parse():
    line = "    def add(self, input: ITensor, shift: Weights = None, axis: int) -> ILayer:"
    assert repair_stub(line) == "    def add(self, input: ITensor, shift: Weights = None, axis: int = ...) -> ILayer:\n"
    assert repair_stub("    def f(self, in: list[int], out: list[int]) -> None:").startswith(
        "    def f(self, in_: list[int]"
    )


def test_builder_type_checks_against_tensorrt_stubs(tmp_path, request):
    pytest.importorskip("mypy")
    stubs = _stub_files()
    for source, relative in stubs:
        target = tmp_path / "path" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(repair_stub(source.read_text()))
    (tmp_path / "path" / "pdsn").symlink_to(ROOT, target_is_directory=True)
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG)
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = pytest_cache.mkdir("mypy") if pytest_cache is not None else tmp_path / "cache"
    command = [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"), "--cache-dir", str(cache)]
    for module in CHECKED:
        command += ["-p", module]
    result = subprocess.run(
        command,
        cwd=tmp_path / "path",
        env={"MYPYPATH": str(tmp_path / "path"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Success: no issues found in {len(CHECKED)} source files" in result.stdout
