"""The 1:N evaluation: rank-1 and TPIR@FPIR, and the Gallery path equal to brute-force re-embedding."""

from __future__ import annotations

import numpy as np
import pytest

from pdsn.train.evaluate import BundleEmbedder
from pdsn.train.identification import (
    brute_force_scores,
    gallery_scores,
    identification_metrics,
    identification_report,
    synthetic_identification,
)


@pytest.fixture(scope="module")
def data():
    return synthetic_identification(enrolled=6, distractors=4, unenrolled=3, probes_per_identity=2, seed=3)


def test_the_set_has_mated_and_non_mated_occluded_probes(data):
    described = data.describe()
    assert described["gallery"] == 10 and described["mated_probes"] == 12 and described["non_mated_probes"] == 6
    assert (data.probe_labels[:12] >= 0).all() and (data.probe_labels[12:] == -1).all()
    assert data.probe_cells.sum(axis=1).min() >= 0 and len(data.probe_kinds) == 18


def test_metrics_on_known_scores(data):
    scores = np.full((len(data.probes), len(data.gallery)), 0.1)
    for row, label in enumerate(data.probe_labels):
        if label >= 0:
            scores[row, label] = 0.9
    metrics = identification_metrics(scores, data, (0.1, 0.5))
    assert metrics["rank1"] == 1.0 and metrics["tpir_at_fpir"]["0.1"] == 1.0
    scores[:12] = scores[:12, ::-1]  # every mated probe now ranks another identity first
    assert identification_metrics(scores, data, (0.1,))["rank1"] == 0.0
    with pytest.raises(ValueError, match="fpir"):
        identification_metrics(scores, data, (1.0,))


@pytest.mark.parametrize("fdm", [False, True])
def test_the_gallery_scores_as_brute_force_re_embedding(data, tiny_bundle, tmp_path, fdm):
    embedder = BundleEmbedder.open(tiny_bundle, "onnxruntime", "fp32")
    with embedder.recognizer:
        brute = brute_force_scores(embedder, data, fdm)
        through = gallery_scores(embedder.recognizer, data, fdm, tmp_path / "g.db")
    np.testing.assert_allclose(through, brute, atol=1e-5)
    report = identification_report([("tiny", "Gallery", fdm, through)], data)
    assert 0.0 <= report["rows"][0]["rank1"] <= 1.0
