"""The torch-free runtime: bundle loading, backends, preprocessing and ``Recognizer``."""

from pdsn.runtime.backends import BackendUnavailableError
from pdsn.runtime.batcher import (
    BackendOutputError,
    BatcherClosedError,
    BatcherFailedError,
    BatcherHealth,
    BatcherStats,
    DeadlineExceededError,
    QueueFullError,
)
from pdsn.runtime.bundle import Bundle, BundleIntegrityError, open_bundle
from pdsn.runtime.preprocess import ImageTooLargeError, decode_image, load_image
from pdsn.runtime.recognizer import Recognizer, Verification

__all__ = [
    "BackendOutputError",
    "BackendUnavailableError",
    "BatcherClosedError",
    "BatcherFailedError",
    "BatcherHealth",
    "BatcherStats",
    "Bundle",
    "BundleIntegrityError",
    "DeadlineExceededError",
    "ImageTooLargeError",
    "QueueFullError",
    "Recognizer",
    "Verification",
    "decode_image",
    "load_image",
    "open_bundle",
]
