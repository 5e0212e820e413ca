"""Opening a bundle: manifest, file hashes, contract and the dictionary, checked before any load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.bundle_format import BundleIntegrityError, ModelContract
from pdsn.model.dictionary import validate_dictionary
from pdsn.model.grid import NUM_CELLS
from pdsn.model.manifest import Manifest, bundle_file, load_manifest, verify_files
from pdsn.model.shipped_models import SYNTHETIC_WEIGHTS


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    dictionary: np.ndarray
    digest: str  # SHA-256 of the manifest.json this was opened from (see ``open_bundle``'s expected_digest)

    @property
    def contract(self) -> ModelContract:
        return self.manifest.contract

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest.variants)

    @property
    def decision_threshold(self) -> float | None:
        """The cosine at or above which two faces are the same person, as measured for this model on real
        pairs (the manifest's ``decision``); None where the bundle records none."""
        decision = self.manifest.decision
        return None if decision is None else decision.threshold

    @property
    def model_note(self) -> str | None:
        """A warning for answers of a model trained on synthetic faces only; None for any other model."""
        model = self.manifest.model
        if model.weights not in SYNTHETIC_WEIGHTS:
            return None
        return (
            f"this model was trained on synthetic faces only; its scores do not tell real people apart ({model.label})"
        )

    def file(self, relative: str, what: str | None = None) -> Path:
        """The path of a file the manifest lists, checked by ``bundle_file``; ``what`` names the manifest entry."""
        return bundle_file(self.path, self.manifest, relative, what or self.manifest.entry_of(relative))

    def variant_path(self, precision: str) -> Path:
        variants = self.manifest.variants
        if precision not in variants:
            raise ValueError(
                f"precision {precision!r} is not in bundle {self.path}; it has {sorted(variants)}. "
                f"Make the variant first (e.g. `pdsn quantize`), or ask for one of those."
            )
        return self.file(variants[precision].file, f"variants.{precision}.file")

    def gate_passed(self, precision: str) -> bool:
        """Whether the variant met its parity gate (fp32 is checked against PyTorch at export)."""
        return self.manifest.variants[precision].parity.passed


def open_bundle(path: str | Path, verify: bool = True, expected_digest: str | None = None) -> Bundle:
    """Read a bundle; with ``verify`` every listed file must exist with its recorded size and SHA-256.

    ``expected_digest``: the SHA-256 of the ``manifest.json`` to accept (``pdsn verify`` prints it),
    for deployments that must also detect a replacement bundle whose hashes are consistent.
    """
    path = Path(path)
    manifest, digest = load_manifest(path, expected_digest)
    if verify:
        verify_files(path, manifest)
    if "fp32" not in manifest.variants:
        raise BundleIntegrityError(
            f"bundle {path} has no fp32 variant (it lists {sorted(manifest.variants)}); "
            f"every bundle starts from `pdsn export`, re-export it"
        )
    contract = manifest.contract
    dictionary_file = bundle_file(path, manifest, manifest.dictionary_file, "dictionary.file")
    dictionary = np.load(dictionary_file, allow_pickle=False).astype(np.float32, copy=False)
    validate_dictionary(dictionary, binary=True, argument=f"bundle dictionary {dictionary_file}")
    expected = (NUM_CELLS, *contract.feature_shape)
    if dictionary.shape != expected:
        raise BundleIntegrityError(
            f"bundle dictionary {dictionary_file} has shape {dictionary.shape}, but the model's "
            f"contract expects {expected}; re-export the bundle with a matching dictionary"
        )
    return Bundle(path, manifest, dictionary, digest)
