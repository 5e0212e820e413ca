"""Open Inference Protocol (KServe v2) tensors in JSON and in the binary tensor data extension.

A binary request is the JSON header (``Inference-Header-Content-Length`` bytes) followed by the raw
data of each input that has a ``binary_data_size`` parameter, in input order: little-endian, row
major, no padding. An output is returned binary when its request asks ``"binary_data": true`` (or
the request's ``binary_data_output`` parameter does and the output says nothing); the response then
carries its own ``Inference-Header-Content-Length``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from pdsn.serve.errors import ApiError

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def protocol_error(message: str, field: str | None = None) -> ApiError:
    """A request the protocol cannot take: 400, as KServe v2 servers answer."""
    return ApiError(400, message, field)


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    # Requested outputs (name -> binary?); empty: every output, binary when ``binary_default``.
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    timeout_s: float | None = None  # Triton's "timeout" request parameter (microseconds)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The inference request in ``body``: JSON, or with ``header_length`` JSON then binary tensors."""
    size = len(body)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > size:
            raise protocol_error(
                f"Inference-Header-Content-Length is {header_length!r}, expected the JSON header's size in bytes "
                f"(at most the body's {size})"
            )
        size = int(header_length)
    try:
        request = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise protocol_error(f"the inference request is not valid JSON ({exc})") from None
    except RecursionError:
        raise protocol_error("the inference request's JSON nests too deeply to be a KServe v2 request") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise protocol_error('the inference request must be a JSON object with a non-empty "inputs" list')
    binary = memoryview(body)[size:]
    inputs, offset = {}, 0
    for index, tensor in enumerate(request["inputs"]):
        name, array, used = _input(tensor, index, binary[offset:])
        if name in inputs:
            raise protocol_error(f"input {name!r} is given twice", name)
        inputs[name], offset = array, offset + used
    if offset != len(binary):
        raise protocol_error(
            f"the body has {len(binary)} bytes of binary tensor data after the JSON header, but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    parameters = _object(request.get("parameters", {}), "parameters")
    return InferRequest(
        id=None if request.get("id") is None else str(request["id"]),
        inputs=inputs,
        outputs=_outputs(request.get("outputs")),
        binary_default=parameters.get("binary_data_output") is True,
        timeout_s=_timeout(parameters.get("timeout")),
    )


def encode_response(
    model_name: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs asked as binary follow the JSON header."""
    tensors, chunks = [], []
    for name, array in outputs.items():
        datatype = next(key for key, dtype in DATATYPES.items() if dtype == array.dtype.newbyteorder("<"))
        tensor: dict[str, object] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.outputs.get(name, request.binary_default):
            data = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    response = {"model_name": model_name, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def _input(tensor: object, index: int, binary: memoryview) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{index}]"
    tensor = _object(tensor, where)
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise protocol_error(f'{where}: "name" must be a non-empty string', where)
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise protocol_error(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}", name)
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise protocol_error(f"input {name!r}: shape {shape!r} must be a list of whole numbers >= 0", name)
    dtype, count = DATATYPES[datatype], math.prod(shape)
    parameters = _object(tensor.get("parameters", {}), f"input {name!r} parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        expected = count * dtype.itemsize
        if isinstance(size, bool) or not isinstance(size, int) or size != expected or size > len(binary):
            raise protocol_error(
                f"input {name!r}: binary_data_size {size!r}, but {datatype} {shape} takes {expected} bytes and "
                f"{len(binary)} remain in the body",
                name,
            )
        return name, np.frombuffer(binary[:size], dtype=dtype).reshape(shape), size
    if "data" not in tensor:
        raise protocol_error(f'input {name!r}: no "data" and no binary_data_size parameter', name)
    return name, _json_data(tensor["data"], name, datatype, dtype, shape, count), 0


def _json_data(data: object, name: str, datatype: str, dtype: np.dtype, shape: list, count: int) -> np.ndarray:
    try:
        values = np.asarray(data)
    except ValueError:
        raise protocol_error(f"input {name!r}: data is not a rectangular list of numbers", name) from None
    if values.size != count:
        raise protocol_error(f"input {name!r}: {values.size} data values for shape {shape} ({count} values)", name)
    # Booleans only for BOOL: true is not the pixel 1, nor a float 1.0.
    kinds = "b" if datatype == "BOOL" else ("iu" if dtype.kind in "iu" else "iuf")
    if values.size and values.dtype.kind not in kinds:
        raise protocol_error(f"input {name!r}: data must be {datatype} numbers, got {values.dtype} values", name)
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise protocol_error(
                f"input {name!r}: values span [{low}, {high}], outside {datatype}'s [{info.min}, {info.max}]", name
            )
    return values.astype(dtype).reshape(shape)


def _outputs(requested: object) -> dict[str, bool]:
    if requested is None:
        return {}
    if not isinstance(requested, list):
        raise protocol_error('"outputs" must be a list of {"name": ...} objects', "outputs")
    outputs = {}
    for index, output in enumerate(requested):
        output = _object(output, f"outputs[{index}]")
        name = output.get("name")
        if not isinstance(name, str):
            raise protocol_error(f'outputs[{index}]: "name" must be a string', f"outputs[{index}]")
        parameters = _object(output.get("parameters", {}), f"output {name!r} parameters")
        outputs[name] = parameters.get("binary_data") is True
    return outputs


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise protocol_error(f"parameters.timeout must be microseconds > 0, got {value!r}", "timeout")
    return value / 1e6


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise protocol_error(f"{where} must be a JSON object, got {type(value).__name__}", where)
    return value
