"""The Python modules of the two TensorRT flavours, how to install them, and importing one.

Engine building (``pdsn.engines``) and the GPU runtime (``pdsn.runtime``) both need these; they
live here, beneath both, so neither imports the other.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FLAVOURS = ("tensorrt", "tensorrt-rtx")
MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
INSTALL_HINTS = {
    "tensorrt": "install data-centre TensorRT 10.8+ or 11.x with NVIDIA's wheels "
    "(`pip install tensorrt`, which fetches its libraries from NVIDIA's package index) "
    "on a machine with an NVIDIA GPU",
    "tensorrt-rtx": "`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings` "
    "(or `pip install 'pdsn-deploy[tensorrt-rtx]'`); it builds engines without a GPU",
}


def import_tensorrt(flavour: str, needs: str) -> ModuleType | None:
    """The flavour's module if it is installed and has attribute ``needs`` (``Builder``, ``Runtime``).

    A bare ``tensorrt-stubs`` install leaves an empty ``tensorrt`` namespace package that imports
    without error, so a module counts as installed only if it has what the caller needs.
    """
    if flavour not in MODULES:
        raise ValueError(f"TensorRT flavour {flavour!r} is not one of {FLAVOURS}")
    try:
        module = importlib.import_module(MODULES[flavour])
    except ImportError:
        return None
    return module if hasattr(module, needs) else None
