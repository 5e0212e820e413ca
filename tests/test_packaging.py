"""The built wheel holds every subpackage and its runtime works from the wheel alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from test_torch_free import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_package_and_runs(tmp_path, tiny_bundle):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("pdsn_deploy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    for module in (
        "pdsn/cli.py",
        "pdsn/model/grid.py",
        "pdsn/export/onnx_export.py",
        "pdsn/runtime/backends/onnxruntime_backend.py",
        "pdsn/kernels/fdm_reference.py",
        "pdsn/kernels/fdm_kernel.cu",
    ):
        assert module in names
    assert not any(name.startswith(("pdsn/tests/", "tests/")) for name in names)
    assert any(name.endswith("entry_points.txt") for name in names)

    code = BLOCK_TORCH + (
        "import pdsn, pdsn.runtime\n"
        f"assert pdsn.__file__.startswith({str(tmp_path / 'site')!r}), pdsn.__file__\n"
        "from pdsn.model.sample_faces import seeded_faces\n"
        f"with pdsn.runtime.Recognizer.open({str(tiny_bundle)!r}) as rec:\n"
        "    assert rec.embed(seeded_faces(1)).shape == (1, 512)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
