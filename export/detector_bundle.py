"""The face detector in a bundle: ``pdsn export`` puts it into every bundle, ``pdsn add-detector`` into an older one.

The three MTCNN nets ship with the package already converted (``model/default_detector/``, made by
``pdsn convert-mtcnn`` and gated against the PyTorch nets there). Placing them checks their hashes
against the conversion report, records their contract under the manifest's ``detector``, and saves
ONNX Runtime's outputs on fixed inputs (``reports/detector-reference.npz``), against which
``pdsn verify`` checks the detector on every backend without torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pdsn.model.bundle_format import DETECTOR_NETS, BundleIntegrityError, sha256_file
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.detector_contract import (
    CONVERSION_REPORT,
    IMAGE_INPUT,
    ONET_FILE,
    ONET_SIZE,
    PNET_FILE,
    RNET_FILE,
    RNET_SIZE,
    SHIPPED_DETECTOR,
    detector_contract,
)

NET_FILES = dict(zip(DETECTOR_NETS, (PNET_FILE, RNET_FILE, ONET_FILE)))
LICENSE_FILE = "LICENSE"
REFERENCE_FILE = "reports/detector-reference.npz"
REFERENCE_SEED = 1234
# Inputs of the reference outputs: one P-Net pyramid level and a batch of R- and O-Net crops.
REFERENCE_SHAPES = {"pnet": (1, 3, 60, 80), "rnet": (8, 3, RNET_SIZE, RNET_SIZE), "onet": (8, 3, ONET_SIZE, ONET_SIZE)}


def write_detector(write: BundleWrite, source: Path = SHIPPED_DETECTOR) -> dict:
    """Place the detector's files from ``source`` into the bundle being written; returns its manifest entry."""
    report = _checked_source(Path(source))
    files = {}
    for net, name in NET_FILES.items():
        staged = write.staging / "detector" / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(source) / name, staged)
        files[net] = staged
    references = write.staging / REFERENCE_FILE
    references.parent.mkdir(parents=True, exist_ok=True)
    _save_references(files, references)
    extras = {}
    for name in (LICENSE_FILE, CONVERSION_REPORT):
        shutil.copyfile(Path(source) / name, write.staging / "detector" / name)
        extras[name] = write.place(write.staging / "detector" / name, f"detector/{name}")
    return {
        "files": {net: write.place(path, f"detector/{NET_FILES[net]}") for net, path in files.items()},
        "contract": detector_contract(),
        "licence": extras[LICENSE_FILE],
        "conversion": {
            "report": extras[CONVERSION_REPORT],
            "source": report.get("source", {}),
        },
        "reference": write.place(references, REFERENCE_FILE),
    }


def add_detector(bundle: str | Path, source: Path = SHIPPED_DETECTOR) -> dict:
    """Put the detector into an existing bundle (one exported before bundles carried it); returns its entry."""
    with BundleWrite(Path(bundle), "pdsn add-detector") as write:
        document = write.existing.document()
        entry = document["detector"] = write_detector(write, source)
        write.commit(document)
    return entry


def reference_inputs() -> dict[str, np.ndarray]:
    """The fixed inputs of the reference outputs: normalised pixels in [-1, 1], seeded."""
    generator = np.random.default_rng(REFERENCE_SEED)
    return {net: generator.uniform(-1.0, 1.0, shape).astype(np.float32) for net, shape in REFERENCE_SHAPES.items()}


def _save_references(files: dict[str, Path], path: Path) -> None:
    import onnxruntime as ort

    arrays = {}
    for net, inputs in reference_inputs().items():
        session = ort.InferenceSession(str(files[net]), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        for name, value in zip(names, session.run(names, {IMAGE_INPUT: inputs})):
            arrays[f"{net}/{name}"] = value
        arrays[f"{net}/{IMAGE_INPUT}"] = inputs
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _checked_source(source: Path) -> dict:
    """The conversion report of ``source``, after checking that its nets are the files it records."""
    report_path = source / CONVERSION_REPORT
    if not report_path.is_file():
        raise FileNotFoundError(
            f"detector {source}: no {CONVERSION_REPORT}; expected a folder made by `pdsn convert-mtcnn`"
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    recorded = report.get("nets", {})
    for name in (*NET_FILES.values(), LICENSE_FILE):
        if not (source / name).is_file():
            raise FileNotFoundError(f"detector {source}: {name} is missing; convert it again with `pdsn convert-mtcnn`")
    for net, name in NET_FILES.items():
        expected = (recorded.get(net) or {}).get("sha256")
        if expected != sha256_file(source / name):
            raise BundleIntegrityError(
                f"detector {source / name}: its SHA-256 is not the one its {CONVERSION_REPORT} records ({expected}); "
                f"the file changed after conversion. Convert it again with `pdsn convert-mtcnn`"
            )
    return report
