"""An access log nobody reads: memory stays bounded (lines dropped and counted), requests are still answered,
and SIGTERM still ends the process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from serve_harness import SERVE_COMMAND

from pdsn.serve.access_log import BoundedAccessLog
from pdsn.triton_repo.local_server import free_port, wait_until_ready

REQUESTS = 3000


def test_a_full_queue_drops_and_counts_and_stop_does_not_wait_on_a_blocked_writer():
    read, write = os.pipe()
    log = BoundedAccessLog(write, capacity=10, timeout=0.5)
    log.start()
    record = logging.LogRecord("pdsn.serve.access", logging.INFO, __file__, 1, "x" * 200, None, None)
    for _ in range(2000):  # about 400 KB: the pipe (64 KiB) fills and blocks the writer, then the queue fills
        log.handler.handle(record)
    assert log.dropped > 1000 and log.queue.qsize() <= 10
    started = time.perf_counter()
    log.stop()
    assert time.perf_counter() - started < 2.0
    os.close(read)
    os.close(write)


def test_a_server_whose_stdout_is_never_read(tiny_bundle, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*SERVE_COMMAND, "--bundle", str(tiny_bundle), "--port", str(port), "--access-log-buffer", "200"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=(tmp_path / "stderr.log").open("wb"))
    try:
        wait_until_ready(process, url, "pdsn serve", lambda: (tmp_path / "stderr.log").read_text(), 120.0)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            for _ in range(REQUESTS):  # about 250 bytes a line: far more than the pipe's 64 KiB
                assert client.get("/v2/health/live").status_code == 200
            resident_pages = int(Path(f"/proc/{process.pid}/statm").read_text().split()[1])
            rss_mib = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
            metrics = client.get("/metrics").text
        dropped = next(line for line in metrics.splitlines() if line.startswith("pdsn_access_log_dropped_total"))
        assert float(dropped.split()[-1]) > 0
        assert rss_mib < 1500
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
