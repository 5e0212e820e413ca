"""Prometheus metrics, in a registry of the app's own: HTTP traffic, and the runtime's state read at scrape.

HTTP requests and latency are counted per route template (``/v2/models/{name}/infer``, never the
raw path), method and status. The batcher's and the gallery's figures are read from their
``stats()`` when Prometheus scrapes, so nothing on the request path counts them twice.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pdsn.runtime.gallery import GalleryError
from pdsn.serve.access_log import access_log_dropped
from pdsn.serve.state import ServeState

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_QUANTILES = ("p50", "p90", "p99")


class ServeMetrics:
    """The app's registry with its HTTP metrics and the runtime collector."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, state: ServeState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "method", "status")
        self.requests = Counter("pdsn_http_requests", "HTTP requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "pdsn_http_request_duration_seconds",
            "Time from a request's arrival to its answer",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.state = state
        in_flight = Gauge("pdsn_http_requests_in_flight", "HTTP requests being answered", registry=self.registry)
        in_flight.set_function(lambda: state.requests_in_flight)
        self.registry.register(RuntimeCollector(state))
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:  # route templates, methods and statuses are few: each pair is looked up once
            labels = (route, method, str(status))
            series = self._series[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        series[0].inc()
        series[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector(Collector):
    """Readiness, the batcher's counters and batch sizes, and the gallery's size and pattern cache."""

    def __init__(self, state: ServeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        ready, _ = self.state.readiness()
        yield GaugeMetricFamily("pdsn_ready", "1 when the server is ready to answer", value=float(ready))
        yield CounterMetricFamily(
            "pdsn_access_log_dropped",
            "Access-log lines dropped because the log's reader fell behind (its queue was full)",
            value=float(access_log_dropped()),
        )
        recognizer = self.state.recognizer
        if recognizer is not None:
            yield from _batcher({"embedding": recognizer.stats(), "features": recognizer.features_stats()})
        if self.state.gallery is not None:
            try:
                stats = self.state.gallery.stats()
            except GalleryError:  # closed while shutting down
                return
            yield from _gallery(stats)


def _batcher(batchers: dict) -> Iterator[Metric]:
    """Each batcher's figures, labelled ``batcher="embedding"`` (the model) or ``"features"`` (the trunk)."""
    counters = {
        "requests": ("pdsn_batcher_requests", "Requests the batcher accepted"),
        "faces": ("pdsn_batcher_faces", "Faces the batcher accepted"),
        "completed": ("pdsn_batcher_completed", "Requests answered"),
        "rejected": ("pdsn_batcher_rejected", "Requests refused because the queue was full (HTTP 429)"),
        "timed_out": ("pdsn_batcher_timeouts", "Requests dropped unrun because their deadline passed in the queue"),
        "cancelled": ("pdsn_batcher_cancelled", "Requests cancelled while queued"),
        "failed": ("pdsn_batcher_failed", "Requests whose batch failed"),
        "batches": ("pdsn_batcher_batches", "Batches run"),
    }
    running = {which: stats for which, stats in batchers.items() if stats is not None}
    for key, (name, documentation) in counters.items():
        family = CounterMetricFamily(name, documentation, labels=["batcher"])
        for which, stats in running.items():
            family.add_metric([which], getattr(stats, key))
        yield family
    depth = GaugeMetricFamily(
        "pdsn_batcher_queue_depth", "Requests accepted and not yet answered (queued or running)", labels=["batcher"]
    )
    batch = HistogramMetricFamily("pdsn_batcher_batch_size", "Faces per batch run", labels=["batcher"])
    for which, stats in running.items():
        answered = stats.completed + stats.timed_out + stats.cancelled + stats.failed
        depth.add_metric([which], stats.requests - answered)
        buckets = [
            (str(float(bound)), sum(count for size, count in stats.batch_sizes.items() if size <= bound))
            for bound in BATCH_BUCKETS
        ]
        buckets.append(("+Inf", sum(stats.batch_sizes.values())))
        batch.add_metric([which], buckets, sum_value=sum(size * count for size, count in stats.batch_sizes.items()))
    yield depth
    yield batch
    for name, attribute, documentation in (
        ("pdsn_batcher_queue_wait_seconds", "queue_wait_ms", "Queue wait per request, recent requests"),
        ("pdsn_batcher_compute_seconds", "compute_ms", "Compute time of each request's batch, recent requests"),
    ):
        quantiles = GaugeMetricFamily(name, documentation, labels=["batcher", "quantile"])
        for which, stats in running.items():
            values = getattr(stats, attribute)
            for quantile in _QUANTILES:
                if quantile in values:
                    quantiles.add_metric([which, f"0.{quantile[1:]}"], values[quantile] / 1000.0)
        yield quantiles


def _gallery(stats) -> Iterator[Metric]:
    yield GaugeMetricFamily("pdsn_gallery_identities", "Identities enrolled", value=stats.identities)
    yield GaugeMetricFamily("pdsn_gallery_faces", "Faces enrolled", value=stats.faces)
    yield GaugeMetricFamily("pdsn_gallery_groups", "Groups of faces enrolled with the same cells", value=stats.groups)
    yield GaugeMetricFamily(
        "pdsn_gallery_damaged_faces",
        "Stored faces left out of searches because they are damaged (`pdsn gallery check --repair`)",
        value=stats.damaged,
    )
    yield CounterMetricFamily("pdsn_gallery_pattern_cache_hits", "Probe patterns found cached", value=stats.cache.hits)
    yield CounterMetricFamily(
        "pdsn_gallery_pattern_cache_misses", "Probe patterns computed from the features", value=stats.cache.misses
    )
    yield GaugeMetricFamily(
        "pdsn_gallery_pattern_cache_bytes", "Bytes the pattern cache holds", value=stats.cache.bytes
    )
