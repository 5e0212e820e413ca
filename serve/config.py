"""What one ``pdsn serve`` process serves, and with which limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdsn.runtime.gallery.gallery import PATTERN_QUEUE, PATTERN_WORKERS, SLICE_BUDGET_BYTES
from pdsn.runtime.gallery.patterns import DEFAULT_CACHE_BYTES

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Far above any face photo; a decompression bomb is refused from its header, before decoding.
DEFAULT_MAX_PIXELS = 16_000_000
# Decoded pixels: one request's images in all, and every request in flight together (serve/limits.PixelBudget).
DEFAULT_MAX_REQUEST_PIXELS = 4 * DEFAULT_MAX_PIXELS
DEFAULT_MAX_PIXELS_IN_FLIGHT = 16 * DEFAULT_MAX_PIXELS
DEFAULT_DEADLINE_MS = 10_000.0
# The longest deadline a request may ask for (X-Deadline-Ms).
MAX_DEADLINE_MS = 600_000.0
MODEL_VERSION = "1"
DEFAULT_PATTERN_CACHE_BYTES = DEFAULT_CACHE_BYTES  # Gallery.open's own defaults
DEFAULT_HEAD_SLICE_BYTES = SLICE_BUDGET_BYTES
# The names a server answers to by default (pdsn.serve.origins): this machine's.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """The bundle and gallery a server opens, its batcher settings and its limits.

    ``deadline_ms``: the deadline of a request that sends no ``X-Deadline-Ms`` (None: none).
    ``api_keys``: when given, every route but the health checks and the API docs needs one.
    """

    bundle: Path
    gallery: Path | str | None = None  # a SQLite file or a postgresql:// URL
    ann_min_faces: int | None = None  # HNSW indexes for the warm patterns of groups this large
    # The gallery's memory for probe patterns: their gallery embeddings, and the head's weights per pattern.
    pattern_cache_bytes: int = DEFAULT_PATTERN_CACHE_BYTES
    head_slice_bytes: int = DEFAULT_HEAD_SLICE_BYTES
    # New probe patterns the gallery computes at once, and lets wait (beyond: 503).
    pattern_workers: int = PATTERN_WORKERS
    pattern_queue: int = PATTERN_QUEUE
    backend: str = "auto"
    backend_options: dict = field(default_factory=dict)  # e.g. the triton backend's url and protocol
    device: str = "cpu"
    precision: str = "auto"
    max_batch: int = 64
    max_delay_ms: float = 2.0
    queue_size: int | None = None
    deadline_ms: float | None = DEFAULT_DEADLINE_MS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_pixels_in_flight: int = DEFAULT_MAX_PIXELS_IN_FLIGHT
    api_keys: tuple[str, ...] = ()
    model_name: str = "pdsn"
    io_threads: int = 4
    # Host names the server answers to ("*": any) and web origins allowed to change state (serve/origins.py).
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.deadline_ms is not None and not 0 < self.deadline_ms <= MAX_DEADLINE_MS:
            raise ValueError(
                f"deadline_ms must be in (0, {MAX_DEADLINE_MS:g}] milliseconds or None, got {self.deadline_ms!r}"
            )
        for name in (
            "max_body_bytes",
            "max_pixels",
            "max_request_pixels",
            "max_pixels_in_flight",
            "io_threads",
            "pattern_cache_bytes",
            "head_slice_bytes",
            "pattern_workers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")
