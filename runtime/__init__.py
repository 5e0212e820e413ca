"""The torch-free runtime: bundle loading, backends, preprocessing and ``Recognizer``."""

from pdsn.runtime.backends import BackendUnavailableError
from pdsn.runtime.bundle import Bundle, BundleIntegrityError, open_bundle
from pdsn.runtime.recognizer import Recognizer, Verification

__all__ = ["BackendUnavailableError", "Bundle", "BundleIntegrityError", "Recognizer", "Verification", "open_bundle"]
