"""A local Triton Inference Server for tests and benchmarks: the nvidia-pytriton wheel's ``tritonserver``;
and what every local KServe v2 server process needs (``tritonserver``, ``pdsn serve``): a free port, and a
wait until it reports ready.

The server runs from a Python environment made by ``scripts/triton-env.sh`` (cached, re-made when
the script changes). Its python backend stub embeds the Python whose ``python3`` comes first on
PATH, so the server starts with that environment's ``bin`` first on PATH and imports numpy < 2
and this checkout's ``pdsn`` from it. It listens on 127.0.0.1 only, on free ports.
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pdsn.errors import PdsnError

ENV_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton-env.sh"
STAMP = ".pdsn-triton-env"
UNOBTAINABLE = 3  # triton-env.sh's exit status when the packages cannot be installed
READY_TIMEOUT_S = 60.0
ENV_TIMEOUT_S = 900.0


class TritonUnobtainable(PdsnError, RuntimeError):
    """The server cannot be had on this machine (platform, or no access to the package registry)."""


def triton_env(env_dir: Path) -> Path:
    """``env_dir``, made or re-made by ``scripts/triton-env.sh`` when missing or stale."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise TritonUnobtainable(
            f"the nvidia-pytriton wheel is for Linux x86_64, not {sys.platform} {platform.machine()}"
        )
    if not ENV_SCRIPT.is_file():
        raise TritonUnobtainable(f"{ENV_SCRIPT} is missing (it ships with the source checkout, not the wheel)")
    digest = hashlib.sha256(ENV_SCRIPT.read_bytes()).hexdigest()
    stamp = env_dir / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and server_dir(env_dir).is_dir():
        return env_dir
    result = subprocess.run(
        ["bash", str(ENV_SCRIPT), str(env_dir)],
        capture_output=True,
        text=True,
        timeout=ENV_TIMEOUT_S,
        env={**os.environ, "PYTHON": sys.executable},
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
    if result.returncode == UNOBTAINABLE:
        raise TritonUnobtainable(f"scripts/triton-env.sh could not install nvidia-pytriton:\n{tail}")
    if result.returncode != 0:
        raise RuntimeError(f"scripts/triton-env.sh failed with {result.returncode}:\n{tail}")
    return env_dir


def server_dir(env_dir: Path) -> Path:
    """The wheel's ``tritonserver`` folder (binary, backends) inside ``env_dir``, for this Python."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return env_dir / "lib" / version / "site-packages" / "pytriton" / "tritonserver"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(
    process: subprocess.Popen, base_url: str, name: str, logs: Callable[[], str], timeout: float, poll_s: float = 0.05
) -> None:
    """Poll ``base_url``'s ``/v2/health/ready`` until it answers 200.

    If ``process`` exits first, or ``timeout`` seconds pass, raise with the tail of its ``logs``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{logs()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/v2/health/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{name} was not ready within {timeout:g} s:\n{logs()[-4000:]}")


class LocalTritonServer:
    """``tritonserver --model-repository REPO`` with its log in ``log``; a context manager that stops it.

    ``stop()`` then ``start()`` restarts it on the same ports.
    """

    def __init__(self, repository: Path, log: Path, env_dir: Path) -> None:
        self.repository, self.log_path, self.env_dir = repository, log, env_dir
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> LocalTritonServer:
        server = server_dir(self.env_dir)
        command = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={server / 'backends'}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        env = {**os.environ, "PATH": f"{self.env_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_until_ready(self.process, f"http://{self.http_url}", "tritonserver", self.logs, timeout, poll_s=0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton unloads its models), SIGKILL if it has not exited within ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
