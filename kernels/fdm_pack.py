"""Bit-packing for the fused FDM kernel, and a numpy emulation of exactly what the kernel computes.

Layout (the CUDA kernel in ``fdm_kernel.cu`` reads the same):

- Dictionary: each of the K = 25 binary items is flattened in C, H, W order (index ``c*H*W + h*W
  + w``) to E elements and packed into ``ceil(E / 32)`` little-endian bit words: element ``e`` is
  bit ``e % 32`` (least significant first) of word ``e // 32``; 1 = keep. Padding bits past E are 0.
  For the 512x7x6 map, E = 21504 and the packed dictionary is [25, 672] uint32 (67 KB instead of
  2.1 MB of float32).
- Occlusion: one uint32 word per image, bit j set when grid cell j is occluded (K <= 32).

The kernel ANDs the packed rows of the occluded cells (all ones when none is occluded) and
multiplies each feature by its bit, which equals :func:`pdsn.kernels.fdm_reference.fdm_gather_mul`
for a binary dictionary.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32
ALL_KEPT = np.uint32(0xFFFFFFFF)


def packed_words(num_elements: int) -> int:
    """Words per packed dictionary row: ``ceil(num_elements / 32)``."""
    return -(-num_elements // WORD_BITS)


def pack_dictionary(dictionary: np.ndarray) -> np.ndarray:
    """Binary [K, C, H, W] (or [K, E]) dictionary -> [K, ceil(E/32)] uint32 bit rows."""
    rows = _binary(dictionary, "dictionary").reshape(dictionary.shape[0], -1)
    padding = packed_words(rows.shape[1]) * WORD_BITS - rows.shape[1]
    bits = np.pad(rows, ((0, 0), (0, padding))).reshape(rows.shape[0], -1, WORD_BITS)
    return np.bitwise_or.reduce(bits.astype(np.uint32) << np.arange(WORD_BITS, dtype=np.uint32), axis=2)


def unpack_dictionary(packed: np.ndarray, num_elements: int) -> np.ndarray:
    """[K, words] uint32 -> [K, num_elements] float32 of 0/1 (the inverse of :func:`pack_dictionary`)."""
    packed = np.asarray(packed, dtype=np.uint32)
    if packed.ndim != 2 or packed.shape[1] != packed_words(num_elements):
        raise ValueError(
            f"packed dictionary has shape {packed.shape}, expected (K, {packed_words(num_elements)}) "
            f"for {num_elements} elements"
        )
    return _bits(packed)[:, :num_elements].astype(np.float32)


def pack_occlusion(occlusion: np.ndarray) -> np.ndarray:
    """[B, K] 0/1 occlusion vectors (K <= 32) -> [B] uint32 words, bit j = cell j occluded."""
    occlusion = _binary(occlusion, "occlusion")
    if occlusion.ndim != 2 or occlusion.shape[1] > WORD_BITS:
        raise ValueError(f"occlusion has shape {occlusion.shape}, expected (B, K) with K <= {WORD_BITS}")
    weights = np.uint32(1) << np.arange(occlusion.shape[1], dtype=np.uint32)
    return (occlusion.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)


def packed_gather_mul(features: np.ndarray, occlusion_words: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Numpy emulation of the kernel: AND the occluded cells' packed rows, multiply by the bits.

    features: (N, ...) float32 or float16 with E elements per image; occlusion_words: (N,) uint32;
    packed: (K, ceil(E/32)) uint32.
    """
    features = np.asarray(features)
    words = np.asarray(occlusion_words, dtype=np.uint32)
    packed = np.asarray(packed, dtype=np.uint32)
    per_image = int(np.prod(features.shape[1:]))
    if words.shape != (features.shape[0],) or packed.ndim != 2 or packed.shape[1] != packed_words(per_image):
        raise ValueError(
            f"packed_gather_mul: features {features.shape}, occlusion words {words.shape} and packed "
            f"dictionary {packed.shape} do not fit: expected ({features.shape[0]},) words and "
            f"(K, {packed_words(per_image)}) rows"
        )
    occluded = (words[:, None] >> np.arange(packed.shape[0], dtype=np.uint32)) & 1  # (N, K)
    chosen = np.where(occluded[:, :, None].astype(bool), packed[None], ALL_KEPT)  # (N, K, words)
    keep = _bits(np.bitwise_and.reduce(chosen, axis=1))[:, :per_image]
    return features * keep.reshape(features.shape).astype(features.dtype)


def _bits(words: np.ndarray) -> np.ndarray:
    """(..., W) uint32 -> (..., W*32) uint8, little bit order."""
    return (
        ((words[..., None] >> np.arange(WORD_BITS, dtype=np.uint32)) & 1)
        .astype(np.uint8)
        .reshape(*words.shape[:-1], -1)
    )


def _binary(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 to be bit-packed; binarise it first")
    return values.astype(np.uint8)
