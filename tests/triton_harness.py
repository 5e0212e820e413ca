"""The real Triton server of the tests: ``pdsn.triton_repo.local_server`` over the cached ``.triton-env/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdsn.triton_repo.local_server import LocalTritonServer, TritonUnobtainable, triton_env

ENV_DIR = Path(__file__).resolve().parents[1] / ".triton-env"


def server_env() -> Path:
    """The server's environment (made once, ~1.5 min); skips the test when it cannot be had here."""
    try:
        return triton_env(ENV_DIR)
    except TritonUnobtainable as exc:
        pytest.skip(f"no Triton server on this machine: {exc}")


__all__ = ["ENV_DIR", "LocalTritonServer", "server_env"]
