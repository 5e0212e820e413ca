"""Putting the occlusion estimator into a bundle (``pdsn add-estimator``; ``pdsn export`` does it for the demo model).

The estimator is exported and gated against PyTorch in the bundle writer's staging folder, then
placed and recorded under ``manifest["estimator"]`` in one atomic manifest switch, like a variant.
"""

from __future__ import annotations

from pathlib import Path

from pdsn.export.estimator_export import write_estimator
from pdsn.model.bundle_format import ModelContract
from pdsn.model.bundle_write import BundleWrite
from pdsn.model.occlusion_net import SHIPPED_ESTIMATOR, load_estimator


def add_estimator(bundle: str | Path, estimator: str | Path = SHIPPED_ESTIMATOR) -> dict:
    """Export ``estimator`` (a ``pdsn train-occlusion`` .pth) into ``bundle``; returns its manifest entry."""
    trained = load_estimator(estimator)
    with BundleWrite(Path(bundle), "pdsn add-estimator") as write:
        manifest = write.existing
        contract = ModelContract.from_dict(manifest["contract"])
        if contract.image_layout != "nhwc-uint8":
            raise ValueError(
                f"bundle {bundle} takes {contract.image_layout} images; the occlusion estimator reads uint8 RGB "
                f"crops, so it is only added to bundles exported with uint8 input (the default)"
            )
        entry = write_estimator(trained, write.staging)
        entry["file"] = write.place(write.staging / entry["file"], entry["file"])
        report = entry["parity"]["report"]
        entry["parity"]["report"] = write.place(write.staging / report, report)
        entry["source"] = str(estimator)
        manifest["estimator"] = entry
        write.commit(manifest)
    return entry
