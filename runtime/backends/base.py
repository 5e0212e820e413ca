"""The interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from pdsn.errors import PdsnError


class BackendUnavailableError(PdsnError, RuntimeError):
    """The requested backend or device cannot be used here (missing library, no GPU, fallback)."""


class Backend(ABC):
    """Runs one model variant. The mask dictionary is bound once, at construction."""

    name: str
    # Batch sizes this backend runs fastest (e.g. CUDA-graph buckets); the batcher dispatches early
    # when the queue makes exactly one of them. Empty: no preference.
    preferred_batch_sizes: tuple[int, ...] = ()
    # True when this backend has ``PipelinedBackend.start``: the batcher then calls it instead of ``infer``.
    pipelined: bool = False

    @abstractmethod
    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        """Embed a validated batch: images in the contract layout, occlusion float32 (N, 25)."""

    @abstractmethod
    def direct_call(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], object]:
        """A zero-argument call of the underlying engine on these inputs, as an application using
        the engine's own API would make it; the benchmark measures the runtime against it."""

    @abstractmethod
    def describe(self) -> dict:
        """What is running: backend, device, providers or engine, threads."""

    def close(self) -> None:  # noqa: B027 - a backend with nothing to release need not override it
        """Release sessions and device memory; the backend is unusable afterwards."""


class PipelinedBackend(Backend):
    """A backend that queues a batch and returns before it is done (GPU streams), so the batcher
    starts the next batch, and its input copies, while this one computes."""

    pipelined = True

    @abstractmethod
    def start(self, images: np.ndarray, occlusion: np.ndarray) -> Callable[[], np.ndarray]:
        """Queue a validated batch; the returned call waits for it and returns its embeddings."""

    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        return self.start(images, occlusion)()
