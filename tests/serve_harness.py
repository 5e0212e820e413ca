"""A real ``pdsn serve`` process on 127.0.0.1 and a free port, started and stopped by a test."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pdsn.triton_repo.local_server import free_port, wait_until_ready

SERVE_COMMAND = [sys.executable, "-m", "pdsn", "serve"]
READY_TIMEOUT_S = 90.0


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
        wait_until_ready(self.process, self.url, "pdsn serve", self.logs, timeout)

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


@contextlib.contextmanager
def gallery_service(bundle: Path, folder: Path, *options: str) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    """``pdsn serve`` over a SQLite gallery in ``folder``, and an HTTP client to it."""
    server = ServerProcess(bundle, folder / "server.log", *options, "--gallery", str(folder / "g.db"))
    with server, httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield server, http
