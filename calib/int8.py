"""INT8 variant with explicit Q/DQ nodes that TensorRT, ONNX Runtime and OpenVINO all accept.

Symmetric activations and weights (zero point 0), per-channel weights, no int32 bias
quantization (TensorRT's parser rejects an Int32 DequantizeLinear input). Only the trunk is
quantized: the normalisation, the FDM op and the head stay FP32 (calib.graph_regions).

Weights take 7 bits by default. x86 CPUs without VNNI (AVX2, AVX-512F alone) multiply
u8 activations by s8 weights into saturating 16-bit pair sums, which 8-bit weights can overflow;
on such a CPU (AMD EPYC, AVX2) the trained demo model's INT8 variant met the gate on ONNX Runtime
but missed it on OpenVINO with 8-bit weights (cosine p1 0.96-0.97), and both met it with margin
with 7 (p1 >= 0.998). GPUs and VNNI CPUs accumulate in 32 bits: 8 bits there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pdsn.calib.data import FaceSet
from pdsn.calib.graph_regions import int8_nodes
from pdsn.model.bundle_format import ModelContract
from pdsn.model.comparison import onnx_feeds

METHODS = ("entropy", "minmax", "percentile")
WEIGHT_BITS = (7, 8)
# One batch per collect_data call: the histogram calibrators hold every intermediate tensor of a
# call in memory (so memory would grow with the sample count) and stack the call's batches into
# one array (which fails when the last batch is smaller); across calls they merge histograms.
CALIBRATION_BATCH = 16


# The calibrator's own defaults (128 histogram bins into 128 quantized bins) make entropy
# calibration pick the full range, i.e. min/max; these follow TensorRT's entropy calibrator.
CALIBRATOR_OPTIONS = {
    "entropy": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.999},
    "minmax": {"symmetric": True},
}


def make_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: FaceSet,
    dictionary: np.ndarray,
    contract: ModelContract,
    method: str,
    cache_path: str | Path,
    progress: bool = True,
    weight_bits: int = 7,
) -> dict:
    """Calibrate into ``cache_path`` (or reuse it when it exists), then write the Q/DQ model."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not one of {METHODS}")
    if weight_bits not in WEIGHT_BITS:
        raise ValueError(f"--weight-bits {weight_bits!r} is not one of {WEIGHT_BITS}")
    cache_path = Path(cache_path)
    cache_hit = cache_path.is_file()
    if not cache_hit:
        _calibrate(fp32_path, cache_path, calibration, dictionary, contract, method, progress)
    quantized = int8_nodes(onnx.load(str(fp32_path), load_external_data=False))
    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        quantize_static(
            str(fp32_path),
            str(out_path),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=weight_bits == 7,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=quantized,
            calibrate_method=_calibration_method(method),
            extra_options={"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True},
            calibration_cache_path=str(cache_path),
        )
    onnx.checker.check_model(str(out_path), full_check=True)
    return {
        "method": method,
        "quantizer": "onnxruntime",
        "weight_bits": weight_bits,
        "cache_reused": cache_hit,
        "quantized_nodes": len(quantized),
    }


def _calibrate(
    fp32_path: str | Path,
    cache_path: Path,
    faces: FaceSet,
    dictionary: np.ndarray,
    contract: ModelContract,
    method: str,
    progress: bool,
) -> None:
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    bar = _bar(len(faces)) if progress else None
    with tempfile.TemporaryDirectory(prefix="pdsn-calib-") as scratch, contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(
            Path(fp32_path),
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=_calibration_method(method),
            extra_options=CALIBRATOR_OPTIONS[method],
        )
        for start in range(0, len(faces), CALIBRATION_BATCH):
            batch = slice(start, start + CALIBRATION_BATCH)
            calibrator.collect_data(
                _OneBatch(onnx_feeds(faces.images[batch], faces.occlusion[batch], dictionary, contract))
            )
            if bar is not None:
                bar.update(len(faces.images[batch]))
        if bar is not None:
            bar.close()
        save_tensors_data(calibrator.compute_data(), cache_path)


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantizer warns on the root logger once per BatchNorm that its 1-D scale takes one
    scale instead of per-channel ones (harmless) and suggests pre-processing; neither is news."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[method]


class _OneBatch:
    """ONNX Runtime calibration reader that yields one batch of feeds."""

    def __init__(self, feeds: dict) -> None:
        self._feeds: dict | None = feeds

    def get_next(self) -> dict | None:
        feeds, self._feeds = self._feeds, None
        return feeds


def _bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="calibrating", unit="img", leave=False)
