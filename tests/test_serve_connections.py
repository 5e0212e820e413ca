"""Slow and idle clients against a live server: stalled headers get a 408 and are closed, stalled bodies are
cut, idle connections are closed, oversized headers get a 431; a SIGTERM is not held up by any of them."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest
from serve_harness import ServerProcess

OPTIONS = ("--backend", "onnxruntime", "--header-timeout-s", "1", "--body-timeout-s", "1", "--max-header-bytes", "8192")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    with ServerProcess(tiny_bundle, tmp_path_factory.mktemp("conn") / "server.log", *OPTIONS) as process:
        yield process


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_all(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, data = time.perf_counter(), b""
    sock.settimeout(limit_s)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.perf_counter() - started
        data += chunk


def test_stalled_headers_get_408_and_close(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        data, took = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 408") and took < 5


def test_an_idle_connection_is_closed(server):
    with _connect(server) as sock:
        data, took = _read_all(sock)
    assert took < 5 and (data == b"" or data.startswith(b"HTTP/1.1 408"))


def test_a_stalled_body_is_cut(server):
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"images": ['
        )
        _, took = _read_all(sock)
    assert took < 5


def test_oversized_headers_get_431(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        data, _ = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 431")


def test_a_prompt_client_is_unaffected(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/v2/health/live").status_code == 200
            time.sleep(0.3)


def test_sigterm_is_not_held_up_by_slow_clients(tiny_bundle, tmp_path):
    with ServerProcess(tiny_bundle, tmp_path / "server.log", *OPTIONS) as process:
        stalled = [_connect(process) for _ in range(3)]
        stalled[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stalled[1].sendall(b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        started = time.perf_counter()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=20) == 0 and time.perf_counter() - started < 10
        for sock in stalled:
            sock.close()
