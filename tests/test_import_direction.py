"""Imports point one way along the pipeline: model -> export -> calib -> engines / runtime.

``kernels`` sits beneath everything; ``train`` and ``bench`` sit beside; the service uses only the
runtime. Every import in the product is read from the source, lazy ones inside functions included,
so a backward import fails here before it becomes a cycle or drags torch into the runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Modules of pdsn.model that may import torch; every other model module is numpy-only.
TORCH_MODEL_MODULES = {
    "pdsn.model.network",
    "pdsn.model.checkpoint",
    "pdsn.model.demo_weights",
    "pdsn.model.occlusion_net",
    "pdsn.model.mtcnn_net",
    "pdsn.model.dlib_resnet",
    "pdsn.model.recognition",
}
ALLOWED = {
    "model": {"model"},
    "kernels": {"kernels"},
    "export": {"model", "kernels", "export"},
    "calib": {"model", "kernels", "export", "calib"},
    "engines": {"model", "kernels", "export", "calib", "engines"},
    "runtime": {"model", "kernels", "runtime"},
    "serve": {"model", "kernels", "runtime", "serve"},
    "train": {"model", "kernels", "runtime", "train"},
    # Benchmarks and real-face evaluations draw occluders and use the evaluation protocols of train.
    "bench": {"model", "kernels", "export", "calib", "runtime", "train", "bench", "triton_repo"},
    "triton_repo": {"model", "kernels", "runtime", "triton_repo"},
}
# Folders whose modules never import torch, nor a pdsn module that does.
TORCH_FREE = {"kernels", "calib", "runtime", "serve", "triton_repo"}


def _product_modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {"tests", ".venv", "build", "dist"} or relative.parts[0].startswith("."):
            continue
        parts = [*relative.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(["pdsn", *parts])] = path
    return modules


def _imports(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative imports resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


MODULES = _product_modules()
GRAPH = {
    name: {i for i in _imports(path, name) if i in MODULES or i.split(".")[0] == "torch"}
    for name, path in MODULES.items()
}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_the_scan_sees_the_product():
    assert {"pdsn.runtime.recognizer", "pdsn.export.onnx_export", "pdsn.calib.variants", "pdsn.cli"} <= set(MODULES)
    assert "pdsn.model.comparison" in GRAPH["pdsn.calib.gates"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _folder(m) in ALLOWED))
def test_imports_point_one_way(module):
    folder = _folder(module)
    backward = sorted(
        imported
        for imported in GRAPH[module]
        if imported.startswith("pdsn.") and _folder(imported) is not None and _folder(imported) not in ALLOWED[folder]
    )
    assert not backward, f"{module} ({folder}/) may import only {sorted(ALLOWED[folder])}, but imports {backward}"


def _reaches_torch(module: str, seen: set[str]) -> list[str] | None:
    """An import chain from ``module`` to torch, or None."""
    if module in seen:
        return None
    seen.add(module)
    for imported in sorted(GRAPH.get(module, ())):
        if imported.split(".")[0] == "torch":
            return [module, imported]
        if imported in MODULES:
            chain = _reaches_torch(imported, seen)
            if chain:
                return [module, *chain]
    return None


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if _folder(m) in TORCH_FREE or (_folder(m) == "model" and m not in TORCH_MODEL_MODULES) or m == "pdsn.verify"
    ),
)
def test_torch_free_modules_never_reach_torch(module):
    chain = _reaches_torch(module, set())
    assert chain is None, f"{module} reaches torch: {' -> '.join(chain)}"


def test_a_backward_import_is_caught(tmp_path):
    """The check itself: a runtime module importing the exporter is reported."""
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from pdsn.export.onnx_export import export_onnx\n")
    imported = _imports(source, "pdsn.runtime.bad")
    assert "pdsn.export.onnx_export" in imported and _folder("pdsn.export.onnx_export") not in ALLOWED["runtime"]
