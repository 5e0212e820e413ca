"""Deadlines bound decoding and face finding too, and heavy requests take turns on the pool with light ones."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_harness import ServerProcess, png

from pdsn.bench.real_photos import group_photo

PHOTOS = 12


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    options = (
        "--backend",
        "onnxruntime",
        "--deadline-ms",
        "60000",
        "--io-threads",
        "2",
        "--max-body-bytes",
        "100000000",
    )
    with ServerProcess(tiny_bundle, tmp_path_factory.mktemp("deadlines") / "server.log", *options) as process:
        yield process


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, tuple[str, bytes]]]:
    """The group photo (six people) at 2000x1500, many times: every photo takes its full detection."""
    buffer = io.BytesIO()
    Image.open(group_photo()).convert("RGB").resize((2000, 1500)).save(buffer, "JPEG", quality=85)
    return [("images", (f"group-{index}.jpg", buffer.getvalue())) for index in range(PHOTOS)]


def test_a_deadline_bounds_decoding_and_detection(server, photos):
    started = time.perf_counter()
    answer = httpx.post(f"{server.url}/v1/embed", files=photos, headers={"X-Deadline-Ms": "300"}, timeout=60)
    took = time.perf_counter() - started
    assert answer.status_code == 504 and "deadline" in answer.json()["error"], answer.text
    assert took < 3.0, f"answered {took:.1f} s after a 0.3 s deadline"


def test_a_light_request_is_not_starved_by_heavy_ones(server, photos):
    """The crop is answered while the heavy requests are still being worked on: judged against them, not a clock,
    so that a slow or busy machine slows both alike."""
    heavy: list[tuple[int, float]] = []  # status and when it was answered

    def post_heavy() -> None:
        answer = httpx.post(f"{server.url}/v1/embed", files=photos, headers={"X-Deadline-Ms": "15000"}, timeout=60)
        heavy.append((answer.status_code, time.perf_counter()))

    threads = [threading.Thread(target=post_heavy) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the heavy requests now take turns on the pool's two threads
    crop = png(np.full((112, 96, 3), 100, np.uint8))
    started = time.perf_counter()
    light = httpx.post(f"{server.url}/v1/embed", files={"images": ("crop.png", crop)}, timeout=60)
    answered = time.perf_counter()
    for thread in threads:
        thread.join(60)
    assert light.status_code == 200, light.text
    assert len(heavy) == 3 and all(code in (200, 504) for code, _ in heavy), heavy
    first_heavy = min(at for _, at in heavy)
    assert answered < first_heavy, (
        f"a crop waited {answered - started:.1f} s, answered {answered - first_heavy:.1f} s after the first of "
        "three heavy requests sent before it"
    )
