"""What a small request may cost in memory: image sizes are read from the headers before anything is decoded,
a request's images have a pixel budget (413), and so have all requests in flight together (503)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_harness import ServerProcess, png

from pdsn.serve.errors import ApiError
from pdsn.serve.limits import PixelBudget

IN_FLIGHT = 2_000_000


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-memory")
    options = ("--backend", "onnxruntime", "--max-pixels-in-flight", str(IN_FLIGHT), "--max-request-pixels", "16000000")
    with ServerProcess(tiny_bundle, folder / "server.log", *options) as process:
        yield process


def _grey_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def _rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_many_large_images_are_refused_from_their_headers(server):
    photo = _grey_png(4000, 4000)  # 16 M pixels in a few kilobytes
    files = [("images", ("big.png", photo)) for _ in range(24)]
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        before = _rss_mib(server.process.pid)
        answer = client.post("/v1/embed", files=files)
        grown = _rss_mib(server.process.pid) - before
    assert answer.status_code == 413 and answer.json()["field"] == "images", answer.text
    assert "over this server's budget of 16,000,000 per request (--max-request-pixels)" in answer.json()["error"]
    assert grown < 100, f"the server's memory grew by {grown:.0f} MiB for a request it refused"


def test_one_image_over_the_in_flight_budget_is_503_and_one_within_it_is_answered(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        answer = client.post("/v1/detect", files={"image": ("big.png", _grey_png(2000, 1500))})
        assert answer.status_code == 503 and answer.json()["field"] == "image"
        assert "--max-pixels-in-flight" in answer.json()["error"] and answer.headers["retry-after"] == "1"
        fits = client.post("/v1/detect", files={"image": ("small.png", png(np.full((400, 300, 3), 90, np.uint8)))})
        assert fits.status_code == 200 and fits.json()["faces"] == []


def test_the_budget_is_held_while_decoding_and_given_back():
    budget = PixelBudget(100)
    with budget.hold(60, "images"):
        assert budget.held == 60
        with pytest.raises(ApiError) as refused, budget.hold(50, "image_b"):
            pass
        assert refused.value.status == 503 and refused.value.field == "image_b"
        with budget.hold(40, "image_b"):
            assert budget.held == 100
    assert budget.held == 0
    with pytest.raises(RuntimeError), budget.hold(100, "images"):
        raise RuntimeError("a failed decode gives the budget back too")
    assert budget.held == 0
