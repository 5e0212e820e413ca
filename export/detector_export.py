"""facenet-pytorch's MTCNN weights -> ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` + ``conversion.json``, gated.

The source is facenet-pytorch's wheel (the three state dicts under ``facenet_pytorch/data/``) or a
folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt``; they are read with ``weights_only=True``,
so nothing in them runs. Each net is traced to ONNX (P-Net with dynamic batch, height and width;
R- and O-Net with a dynamic batch), then run on ONNX Runtime's CPU provider against the PyTorch net
on the same inputs: seeded uniform noise and face-like crops. Every output must agree to the gate's
max abs error and cosine; if one net misses, nothing is written and ``DetectorParityError`` says
which output of which net on which inputs. Tracing is deterministic, so the same weights give the
same bytes (``conversion.json`` records their SHA-256s).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pdsn.errors import PdsnError
from pdsn.export.onnx_export import MIN_OPSET, traced_onnx
from pdsn.model.detector_contract import (
    CONVERSION_REPORT,
    IMAGE_INPUT,
    ONET_FILE,
    ONET_OUTPUTS,
    ONET_SIZE,
    PIXEL_MEAN,
    PIXEL_SCALE,
    PNET_FILE,
    PNET_OUTPUTS,
    RNET_FILE,
    RNET_OUTPUTS,
    RNET_SIZE,
    detector_contract,
)
from pdsn.model.mtcnn_net import load_net
from pdsn.model.sample_faces import seeded_faces

DEFAULT_OPSET = 18
WHEEL_DATA = "facenet_pytorch/data"
# (net, ONNX file, output names, input spatial sizes to check); P-Net's sizes cover odd and even sides.
_NETS = (
    ("pnet", PNET_FILE, PNET_OUTPUTS, ((12, 12), (37, 50), (120, 97))),
    ("rnet", RNET_FILE, RNET_OUTPUTS, ((RNET_SIZE, RNET_SIZE),)),
    ("onet", ONET_FILE, ONET_OUTPUTS, ((ONET_SIZE, ONET_SIZE),)),
)
_BATCH = 8


class DetectorParityError(PdsnError, RuntimeError):
    """An exported detector net does not reproduce the PyTorch one."""


@dataclass(frozen=True)
class DetectorGate:
    """Every output of every net on ONNX Runtime FP32 against PyTorch eager FP32."""

    max_abs_error: float = 1e-4
    min_cosine: float = 0.99999


def convert_mtcnn(source: Path, out_dir: Path, gate: DetectorGate = DetectorGate(), opset: int = DEFAULT_OPSET) -> dict:
    """Export and gate the three nets from ``source``; write them and ``conversion.json`` to ``out_dir``.

    Returns the report written to ``conversion.json``. Raises ``DetectorParityError`` (nothing
    written) when a net misses ``gate``, ``ValueError`` when ``source`` lacks a state dict.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    source, out_dir = Path(source), Path(out_dir)
    state_dicts = _read_state_dicts(source)
    files: dict[str, bytes] = {}
    nets: dict[str, dict] = {}
    for name, file, outputs, sizes in _NETS:
        net = load_net(name, io.BytesIO(state_dicts[name]))
        proto = _export(net, name, outputs, opset)
        data = proto.SerializeToString(deterministic=True)
        nets[name] = {
            "file": file,
            "source_sha256": hashlib.sha256(state_dicts[name]).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "parity": _parity(net, name, data, outputs, sizes, gate),
        }
        files[file] = data
    failures = [f"{name}: {failure}" for name, entry in nets.items() for failure in entry["parity"]["failures"]]
    if failures:
        raise DetectorParityError(
            f"the exported MTCNN nets do not reproduce PyTorch (gate {asdict(gate)}): {'; '.join(failures)}"
        )
    report = {
        "source": {
            "name": source.name,
            "kind": "wheel" if source.is_file() else "folder",
            "sha256": _sha256_file(source) if source.is_file() else None,
        },
        "opset": opset,
        "torch": torch.__version__.split("+")[0],
        "compared": "onnxruntime CPU vs PyTorch eager FP32",
        "gate": asdict(gate),
        "nets": nets,
        "contract": detector_contract(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (out_dir / file).write_bytes(data)
    (out_dir / CONVERSION_REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _read_state_dicts(source: Path) -> dict[str, bytes]:
    names = [name for name, *_ in _NETS]
    if source.is_dir():
        missing = [f"{name}.pt" for name in names if not (source / f"{name}.pt").is_file()]
        if missing:
            raise ValueError(f"{source}: missing {missing}; expected a folder with pnet.pt, rnet.pt and onet.pt")
        return {name: (source / f"{name}.pt").read_bytes() for name in names}
    if not zipfile.is_zipfile(source):
        raise ValueError(
            f"{source}: neither a folder nor a wheel (zip); pass facenet-pytorch's wheel "
            f"(`pip download --no-deps facenet-pytorch==2.6.0`) or a folder with its three .pt files"
        )
    with zipfile.ZipFile(source) as wheel:
        present = set(wheel.namelist())
        missing = [f"{WHEEL_DATA}/{name}.pt" for name in names if f"{WHEEL_DATA}/{name}.pt" not in present]
        if missing:
            raise ValueError(f"{source}: the wheel lacks {missing}; expected facenet-pytorch's wheel")
        return {name: wheel.read(f"{WHEEL_DATA}/{name}.pt") for name in names}


def _export(net: nn.Module, name: str, outputs: tuple[str, ...], opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    if name == "pnet":
        example = torch.zeros(2, 3, 40, 50)
        dims = {0: batch, 2: torch.export.Dim("height", min=12), 3: torch.export.Dim("width", min=12)}
    else:
        side = RNET_SIZE if name == "rnet" else ONET_SIZE
        example, dims = torch.zeros(2, 3, side, side), {0: batch}
    proto = traced_onnx(net, (example,), [IMAGE_INPUT], list(outputs), opset, (dims,))
    produced = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if produced != opset:
        raise ValueError(f"opset {opset} was asked for, but torch.onnx produced opset {produced}")
    # The exporter records each node's Python stack (with this checkout's file paths): drop it, so the
    # files are the same bytes wherever they are converted.
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer):
        del value.metadata_props[:]
    proto.producer_name = "pdsn-deploy"
    proto.producer_version = ""
    proto.doc_string = f"MTCNN {name} (weights of facenet-pytorch's MTCNN)"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _parity(
    net: nn.Module,
    name: str,
    data: bytes,
    outputs: tuple[str, ...],
    sizes: tuple[tuple[int, int], ...],
    gate: DetectorGate,
) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    cases: dict[str, dict[str, dict]] = {}
    failures: list[str] = []
    for height, width in sizes:
        for kind, batch in (("noise", _noise(height, width)), ("faces", _faces(height, width))):
            with torch.no_grad():
                expected = [t.numpy() for t in net(torch.from_numpy(batch))]
            got = session.run(list(outputs), {IMAGE_INPUT: batch})
            case = f"{kind} {height}x{width}"
            cases[case] = {}
            for output, ref, out in zip(outputs, expected, got, strict=True):
                metrics = _compare(ref, out)
                cases[case][output] = metrics
                if metrics["max_abs_error"] > gate.max_abs_error or metrics["cosine"] < gate.min_cosine:
                    failures.append(
                        f"{output} on {case}: max |err| {metrics['max_abs_error']:.2e}, cosine {metrics['cosine']:.7f}"
                    )
    worst = {
        "max_abs_error": max(m["max_abs_error"] for c in cases.values() for m in c.values()),
        "cosine_min": min(m["cosine"] for c in cases.values() for m in c.values()),
    }
    return {"cases": cases, **worst, "passed": not failures, "failures": failures}


def _compare(reference: np.ndarray, got: np.ndarray) -> dict:
    if reference.shape != got.shape:
        return {"max_abs_error": float("inf"), "cosine": -1.0, "shape": list(got.shape)}
    a, b = reference.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
    return {"max_abs_error": round(float(np.abs(a - b).max()), 9), "cosine": round(cosine, 9)}


def _noise(height: int, width: int) -> np.ndarray:
    pixels = np.random.default_rng(height * 1000 + width).integers(0, 256, (_BATCH, 3, height, width))
    return ((pixels - PIXEL_MEAN) * PIXEL_SCALE).astype(np.float32)


def _faces(height: int, width: int) -> np.ndarray:
    """Face-like crops (``seeded_faces``), area-resampled to the input size and normalised."""
    faces = torch.from_numpy(seeded_faces(_BATCH, seed=height + width)).permute(0, 3, 1, 2).float()
    resized = nn.functional.interpolate(faces, size=(height, width), mode="area")
    return ((resized - PIXEL_MEAN) * PIXEL_SCALE).numpy().astype(np.float32)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m pdsn.export.detector_export SOURCE OUT_DIR``: convert and print the parity summary."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="facenet-pytorch's wheel, or a folder with pnet/rnet/onet.pt")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    report = convert_mtcnn(args.source, args.out_dir)
    for name, entry in report["nets"].items():
        parity = entry["parity"]
        print(f"{name}: max |err| {parity['max_abs_error']:.2e}, cosine min {parity['cosine_min']:.7f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
