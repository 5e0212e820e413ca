"""One server's ``Recognizer`` and ``Gallery``: loaded in the background, warmed up, then ready; closed last.

Readiness means the backend and the gallery are loaded, a warm-up batch ran, and the batcher is
healthy. Until then (and once shutting down) routes that need the model answer 503.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pdsn.runtime import Recognizer
from pdsn.runtime.gallery import Gallery, recorded_precision, shown_location
from pdsn.serve.config import ServeConfig
from pdsn.serve.errors import ApiError, not_ready
from pdsn.serve.limits import PixelBudget

# Faces in the warm-up batch (at most max_batch): enough to touch the batched code paths.
WARM_UP_FACES = 8
logger = logging.getLogger("pdsn.serve")


class ServeState:
    """What the routes share. ``load`` runs once, on a worker thread; ``close`` at shutdown."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.recognizer: Recognizer | None = None
        self.gallery: Gallery | None = None
        self.model_id = ""
        self.pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="pdsn-serve-io")
        self.pixels = PixelBudget(config.max_pixels_in_flight)
        self._phase = "loading"
        # Reasons are answered to anyone (health, 503s): they never name a path; the log does.
        self._reason = "loading the bundle"
        logger.info("loading the bundle %s", config.bundle)
        # HTTP requests being answered, counted by the access middleware on the event loop.
        self.requests_in_flight = 0

    def load(self) -> None:
        """Open the bundle (and the gallery), run a warm-up batch, then report ready."""
        config = self.config
        precision = config.precision
        if precision == "auto" and config.gallery is not None:
            # The gallery's faces hold one variant's features: serve that one, not a faster one made since.
            recorded = recorded_precision(config.gallery)
            if recorded is not None:
                precision = recorded
                logger.info("serving precision %s (the gallery's)", precision)
        recognizer = Recognizer.open(
            config.bundle,
            backend=config.backend,
            device=config.device,
            precision=precision,
            max_batch=config.max_batch,
            max_delay_ms=config.max_delay_ms,
            queue_size=config.queue_size,
            **config.backend_options,
        )
        try:
            gallery = None
            if config.gallery is not None:
                self._reason = "opening the gallery"
                logger.info("opening the gallery %s", shown_location(config.gallery))
                gallery = Gallery.open(
                    config.gallery,
                    recognizer,
                    create=True,
                    ann_min_faces=config.ann_min_faces,
                    cache_bytes=config.pattern_cache_bytes,
                    slice_bytes=config.head_slice_bytes,
                    pattern_workers=config.pattern_workers,
                    pattern_queue=config.pattern_queue,
                )
                self._reason = "computing the gallery's warm patterns"
                gallery.warm()
            self._reason = "running the warm-up batch"
            _warm_up(recognizer, gallery is not None)
        except BaseException:
            if gallery is not None:
                gallery.close()
            recognizer.close()
            raise
        self.recognizer, self.gallery = recognizer, gallery
        self.model_id = recognizer.bundle.manifest.variant_id(recognizer.precision)
        self._phase = "ready"
        logger.info("ready: %s (%s) on %s", self.model_id, recognizer.precision, recognizer.backend_info["backend"])

    def failed(self, exc: BaseException) -> None:
        self._phase = "failed"
        self._reason = f"loading failed ({type(exc).__name__}); the server log says why"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not)."""
        if self._phase != "ready" or self.recognizer is None:
            return False, self._reason
        health = self.recognizer.health()
        return health.healthy, health.reason

    def serving(self) -> Recognizer:
        """The recognizer, or a 503 while loading or shutting down."""
        if self._phase != "ready" or self.recognizer is None:
            raise not_ready(self._reason)
        return self.recognizer

    @property
    def loaded_recognizer(self) -> Recognizer:
        """The recognizer, for a route that has passed ``serving()``: set once loaded, never unset after."""
        if self.recognizer is None:
            raise not_ready(self._reason)
        return self.recognizer

    def serving_gallery(self) -> Gallery:
        """The gallery, a 503 while not ready, or a 404 on a server started without one."""
        self.serving()
        if self.gallery is None:
            raise ApiError(404, "this server has no gallery; start it with `pdsn serve --gallery FILE`")
        return self.gallery

    def close(self) -> None:
        """Stop serving; close the gallery, then the recognizer (which answers everything it accepted)."""
        self._phase, self._reason = "stopping", "the server is shutting down"
        if self.gallery is not None:
            self.gallery.close()
        if self.recognizer is not None:
            self.recognizer.close()
        self.pool.shutdown(wait=True)


def _warm_up(recognizer: Recognizer, features: bool) -> None:
    contract = recognizer.contract
    dtype = np.uint8 if contract.image_layout == "nhwc-uint8" else np.float32
    faces = np.zeros((min(WARM_UP_FACES, recognizer.max_batch), *contract.image_shape), dtype)
    recognizer.submit(faces).result()
    if features:
        recognizer.submit_features(faces).result()
