"""TensorRT quickly deployable plugin (QDP) for the fused FDM op, implemented ahead of time.

The ahead-of-time implementation hands TensorRT the kernel's PTX, launch grid and scalar
arguments, all of which TensorRT stores in the engine: an engine that uses the plugin runs without
Python. Only the process that builds the engine registers the plugin.

Availability (checked 2026-11): ``tensorrt.plugin`` with ``aot_impl`` is in data-centre TensorRT
10.9 and later. TensorRT-RTX 1.7 has no ``plugin`` module (its bindings carry the
``IPluginV3Quick*`` interfaces but not the decorators), so RTX engines use the inlined body.

Plugin ``ai.pdsn::FdmGatherMulPacked``: inputs features [N, C, H, W] float32 or float16, occlusion
words [N] int32 and the packed dictionary [K, ceil(C*H*W/32)] int32 (the uint32 rows of
``fdm_pack``, reinterpreted); one output shaped like the features. The ONNX rewrite that feeds it
is :mod:`pdsn.engines.fdm_plugin_graph`.

This module does not use postponed annotations: ``tensorrt.plugin.register`` reads the
descriptor's annotations as objects.
"""

import functools
import weakref
from typing import Any

from pdsn.kernels.fdm_nvrtc import KERNELS, compile_ptx

PLUGIN_NAMESPACE = "ai.pdsn"
PLUGIN_NAME = "FdmGatherMulPacked"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
PLUGIN_VERSION = "1"
THREADS_PER_BLOCK = 256
PTX_COMPUTE_CAPABILITY = "7.5"  # the lowest target: the driver JIT-compiles the PTX for newer GPUs

_registered_with: weakref.WeakSet[Any] = weakref.WeakSet()  # tensorrt.plugin modules


def plugin_kernel(half: bool) -> tuple[str, bytes]:
    """The kernel name and the PTX the ahead-of-time implementation embeds in the engine."""
    return KERNELS["float16" if half else "float32"], _ptx()


@functools.cache
def _ptx() -> bytes:
    return compile_ptx(PTX_COMPUTE_CAPABILITY)


def aot_launch(trtp: Any, features: Any, dictionary: Any, half: bool) -> tuple[str, bytes, Any, Any]:
    """``(kernel name, PTX, launch parameters, scalar arguments)`` for symbolic input shapes.

    One thread per feature element; the scalars follow the kernel's signature: batch, elements
    per image, words per dictionary row, cells.
    """
    shape = features.shape_expr
    batch = shape[0]
    elements = shape[1] * shape[2] * shape[3]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = (batch * elements + (THREADS_PER_BLOCK - 1)) // THREADS_PER_BLOCK
    launch.block_x = THREADS_PER_BLOCK
    scalars = trtp.SymIntExprs.from_tuple(
        tuple(trtp.SymInt32(value) for value in (batch, elements, dictionary.shape_expr[1], dictionary.shape_expr[0]))
    )
    name, ptx = plugin_kernel(half)
    return name, ptx, launch, scalars


def register_fdm_plugin() -> None:
    """Register the plugin in TensorRT's plugin registry (once per process and TensorRT module)."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError:
        raise RuntimeError(
            "the fused FDM plugin needs data-centre TensorRT 10.9 or later (its tensorrt.plugin "
            "module); build with --fdm-impl native instead"
        ) from None
    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(
            f"TensorRT {trt.__version__}'s tensorrt.plugin has no ahead-of-time implementations "
            f"(10.9 and later do); build with --fdm-impl native or upgrade TensorRT"
        )
    if trtp in _registered_with:
        return

    @trtp.register(PLUGIN_ID)
    def describe(features: trtp.TensorDesc, occlusion: trtp.TensorDesc, dictionary: trtp.TensorDesc) -> trtp.TensorDesc:
        if occlusion.dtype != trt.int32 or dictionary.dtype != trt.int32:
            raise ValueError(
                f"{PLUGIN_ID}: occlusion words and packed dictionary must be int32, got "
                f"{occlusion.dtype} and {dictionary.dtype}"
            )
        return features.like()

    @trtp.aot_impl(PLUGIN_ID)
    def implement(features, occlusion, dictionary, outputs):
        return aot_launch(trtp, features, dictionary, features.dtype == trt.float16)

    _registered_with.add(trtp)
