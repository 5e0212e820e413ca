"""The model's real inputs and outputs, checked against the bundle's contract when a backend loads it.

Each backend lists what its loaded model takes and returns as ``TensorSpec``s (ONNX Runtime's
session, OpenVINO's compiled ports, a TensorRT engine's I/O tensors) and calls ``check_model_io``
before the first inference: a manifest whose contract describes another model than the file it
lists is refused at open, not by a wrong answer or an error at the first call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pdsn.kernels.fdm_pack import packed_words
from pdsn.model.bundle_format import (
    DICTIONARY_INPUT,
    EMBEDDING_OUTPUT,
    FEATURES_OUTPUT,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    PACKED_DICTIONARY_INPUT,
    BundleIntegrityError,
    ModelContract,
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``dtype`` a numpy dtype name, None for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


# What a model file does: the whole recognition model, or its trunk (image -> feature map before the mask).
ROLES = ("embedding", "features")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return role


def check_model_io(
    contract: ModelContract,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    source: str,
    role: str = "embedding",
) -> None:
    """Names, dtypes and shapes of ``source``'s inputs and outputs must be the contract's.

    ``role="features"``: the trunk model, which takes the image alone and gives the feature map.

    The batch dimension must be dynamic. A bound dictionary may be the contract's float32
    (25, C, H, W) input or the FDM plugin's bit-packed int32 (25, words) one.
    """
    if check_role(role) == "features":
        expected_inputs = _expected(contract, set())[0][:1]
        expected_outputs = [TensorSpec(FEATURES_OUTPUT, "float32", (None, *contract.feature_shape))]
    else:
        expected_inputs, expected_outputs = _expected(contract, {t.name for t in inputs})
    problems = _compare("input", expected_inputs, inputs) + _compare("output", expected_outputs, outputs)
    if problems:
        raise BundleIntegrityError(
            f"{source} does not match the bundle's contract:\n  "
            + "\n  ".join(problems)
            + "\nThe manifest describes another model than the file it lists; re-export the bundle with "
            "`pdsn export` (and re-make its variants and engines) rather than editing it"
        )


def _expected(contract: ModelContract, input_names: set[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    image_dtype = "uint8" if contract.image_layout == "nhwc-uint8" else "float32"
    inputs = [
        TensorSpec(IMAGE_INPUT, image_dtype, (None, *contract.image_shape)),
        TensorSpec(OCCLUSION_INPUT, "float32", (None, contract.num_cells)),
    ]
    if contract.dictionary_binding == "input" and PACKED_DICTIONARY_INPUT in input_names:
        words = packed_words(contract.feature_shape[0] * contract.feature_shape[1] * contract.feature_shape[2])
        inputs.append(TensorSpec(PACKED_DICTIONARY_INPUT, "int32", (contract.num_cells, words)))
    elif contract.dictionary_binding == "input":
        inputs.append(TensorSpec(DICTIONARY_INPUT, "float32", (contract.num_cells, *contract.feature_shape)))
    return inputs, [TensorSpec(EMBEDDING_OUTPUT, "float32", (None, contract.embedding_size))]


def _compare(kind: str, expected: list[TensorSpec], actual: Sequence[TensorSpec]) -> list[str]:
    found = {t.name: t for t in actual}
    problems = []
    for want in expected:
        got = found.pop(want.name, None)
        if got is None:
            problems.append(
                f"{kind} {want.name!r} is missing (the model's {kind}s: {', '.join(t.name for t in actual) or 'none'})"
            )
            continue
        if got.dtype != want.dtype:
            problems.append(f"{kind} {want.name!r} is {got.dtype}, the contract says {want.dtype}")
        if tuple(got.shape) != want.shape:
            problems.append(
                f"{kind} {want.name!r} has shape {_shape(got.shape)}, the contract says {_shape(want.shape)}"
                + (" (N: a dynamic batch)" if want.shape[0] is None and tuple(got.shape[:1]) != (None,) else "")
            )
    problems += [f"{kind} {name!r} is not in the contract" for name in found]
    return problems


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
