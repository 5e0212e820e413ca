"""A real ``pdsn serve`` process on 127.0.0.1 and a free port, started and stopped by a test."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

SERVE_COMMAND = [sys.executable, "-m", "pdsn", "serve"]
READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def b64(image: np.ndarray) -> str:
    return base64.b64encode(png(image)).decode()


class ServerProcess:
    """``pdsn serve --bundle BUNDLE OPTIONS`` with its output in ``log``; a context manager that kills on exit."""

    def __init__(self, bundle: Path, log: Path, *options: str) -> None:
        self.bundle, self.log_path, self.options = bundle, log, options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> ServerProcess:
        command = [*SERVE_COMMAND, "--bundle", str(self.bundle), "--port", str(self.port), *self.options]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pdsn serve exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"pdsn serve was not ready within {timeout} s:\n{self.logs()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status once it has drained."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
