"""1:N identification under the PDSN protocol: an occlusion-aware gallery of enrolled faces."""

from pdsn.runtime.gallery.gallery import (
    Enrollment,
    Gallery,
    GalleryStats,
    Identification,
    Match,
    recorded_precision,
)
from pdsn.runtime.gallery.locations import shown_location
from pdsn.runtime.gallery.patterns import DEFAULT_WARM_PATTERNS, CacheStats, PatternBusyError
from pdsn.runtime.gallery.records import DuplicateIdentityError, GalleryError, NoGalleryError, UnknownIdentityError

__all__ = [
    "DEFAULT_WARM_PATTERNS",
    "CacheStats",
    "DuplicateIdentityError",
    "Enrollment",
    "Gallery",
    "GalleryError",
    "GalleryStats",
    "Identification",
    "Match",
    "NoGalleryError",
    "PatternBusyError",
    "UnknownIdentityError",
    "recorded_precision",
    "shown_location",
]
