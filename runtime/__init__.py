"""The torch-free runtime: bundle loading, backends, preprocessing and ``Recognizer``."""

from pdsn.runtime.backends import BackendUnavailableError
from pdsn.runtime.batcher import BatcherClosedError, BatcherStats, DeadlineExceededError, QueueFullError
from pdsn.runtime.bundle import Bundle, BundleIntegrityError, open_bundle
from pdsn.runtime.recognizer import Recognizer, Verification

__all__ = [
    "BackendUnavailableError",
    "BatcherClosedError",
    "BatcherStats",
    "Bundle",
    "BundleIntegrityError",
    "DeadlineExceededError",
    "QueueFullError",
    "Recognizer",
    "Verification",
    "open_bundle",
]
