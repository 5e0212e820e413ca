"""Whether an NVIDIA GPU can be used here, for tests marked ``gpu``."""

from __future__ import annotations

import functools


@functools.cache
def has_gpu() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False
    status, count = runtime.cudaGetDeviceCount()
    return int(status) == 0 and count > 0
