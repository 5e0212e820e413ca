"""The runtime's operations on located faces, which the service awaits: parts of ``max_batch`` in one future,
admitted whole or not at all, the same answers as the blocking calls, and cancelled together."""

from __future__ import annotations

import numpy as np
import pytest

from pdsn.errors import InputError
from pdsn.model.grid import SUNGLASSES_CELLS
from pdsn.model.occlusion import NO_OCCLUSION, Occlusion
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import QueueFullError, Recognizer


@pytest.fixture(scope="module")
def small_queue(tiny_bundle):
    """Two faces a batch, four queued at most, and a long wait for a batch to fill (so parts stay queued)."""
    with Recognizer.open(
        tiny_bundle, backend="onnxruntime", precision="fp32", max_batch=2, queue_size=4, max_delay_ms=200.0
    ) as recognizer:
        yield recognizer


def test_a_request_in_parts_answers_as_the_blocking_call(small_queue):
    faces = seeded_faces(4, seed=5)
    located = small_queue.locate(faces)
    occlusion = (Occlusion.from_cells(SUNGLASSES_CELLS), NO_OCCLUSION, NO_OCCLUSION, Occlusion.from_cells([3]))
    embeddings = small_queue.submit_faces(located, occlusion).result(timeout=30)
    expected = small_queue.embed(faces, occlusion=list(occlusion))
    assert embeddings.shape == (4, small_queue.contract.embedding_size)
    assert np.allclose(embeddings, expected, atol=1e-5)
    features = small_queue.submit_faces_features(located).result(timeout=30)
    assert np.allclose(features, small_queue.features(faces), atol=1e-5)


def test_more_faces_than_the_queue_holds_are_refused_whole(small_queue):
    located = small_queue.locate(seeded_faces(5, seed=6))
    with pytest.raises(InputError, match="occlusion: 4 values for 5 faces"):
        small_queue.submit_faces(located, (NO_OCCLUSION,) * 4)
    with pytest.raises(QueueFullError, match="cannot take 5 more"):
        small_queue.submit_faces(located, (NO_OCCLUSION,) * 5)
    assert small_queue.embed(seeded_faces(5, seed=6)).shape[0] == 5  # a blocking call runs a part at a time


def test_cancelling_a_request_cancels_its_queued_parts(small_queue):
    located = small_queue.locate(seeded_faces(4, seed=7))
    small_queue.stats(reset=True)
    future = small_queue.submit_faces(located, (NO_OCCLUSION,) * 4)
    assert future.cancel()
    small_queue.embed(seeded_faces(1, seed=8))  # the batcher goes on serving
    stats = small_queue.stats(reset=True)
    assert stats.requests == 3 and stats.cancelled >= 1  # the second part at least was still queued


def test_verification_scores_the_pair_under_the_union(small_queue):
    faces = seeded_faces(2, seed=9)
    a, b = small_queue.locate(faces[0]), small_queue.locate(faces[1])
    glasses, scarf = Occlusion.from_cells(SUNGLASSES_CELLS), Occlusion.from_cells([20, 21, 22, 23, 24])
    scored = small_queue.submit_verification(a, b, glasses, scarf).result(timeout=30)
    expected = small_queue.verify(faces[0], faces[1], list(glasses.cells), list(scarf.cells))
    assert scored.occlusion == glasses | scarf and list(scored.occlusion.cells) == expected.occluded_cells
    assert scored.score == pytest.approx(expected.score, abs=1e-6)
