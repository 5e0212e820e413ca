"""The runtime and its CLI commands run where torch cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_blocker_really_blocks():
    result = _run("import torch")
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_runtime_imports_and_embeds_without_torch(tiny_bundle):
    result = _run(
        f"""
        import numpy as np
        import pdsn.runtime
        from pdsn.runtime import Recognizer
        from pdsn.model.sample_faces import seeded_faces
        with Recognizer.open({str(tiny_bundle)!r}) as rec:
            out = rec.embed(seeded_faces(2), occlusion=[10, 11, 12, 13])
            score = rec.verify(*seeded_faces(2, seed=3)).score
        assert out.shape == (2, 512) and np.isfinite(out).all()
        assert "torch" not in sys.modules
        print("ok", score)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_cli_embed_runs_without_torch(tiny_bundle, tmp_path):
    from PIL import Image

    from pdsn.model.sample_faces import seeded_faces

    path = tmp_path / "face.png"
    Image.fromarray(seeded_faces(1)[0]).save(path)
    result = _run(
        f"""
        from pdsn.cli import main
        code = main(["embed", "--bundle", {str(tiny_bundle)!r}, {str(path)!r}, "--out", {str(tmp_path / "e.npy")!r}])
        assert "torch" not in sys.modules
        sys.exit(code)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 embeddings of size 512" in result.stdout


def test_verify_and_quantize_run_without_torch(tiny_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    result = _run(
        f"""
        from pdsn.cli import main
        bundle = {str(bundle)!r}
        assert main(["quantize", "--bundle", bundle, "--precision", "fp16", "--holdout", "8"]) == 0
        assert main(["quantize", "--bundle", bundle, "--calib", "synthetic", "--method", "minmax",
                     "--samples", "16", "--holdout", "8", "--mean-cosine", "0.0"]) == 0
        code = main(["verify", "--bundle", bundle, "--faces", "8"])
        assert "torch" not in sys.modules
        sys.exit(code)
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fp16 on onnxruntime" in result.stdout and "int8 on onnxruntime" in result.stdout
