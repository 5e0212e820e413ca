"""Opening a bundle: manifest, file hashes, contract and the dictionary, checked before any load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.bundle_format import ModelContract, read_manifest, sha256_file
from pdsn.model.dictionary import validate_dictionary
from pdsn.model.grid import NUM_CELLS


class BundleIntegrityError(ValueError):
    """A bundle file is missing, altered or inconsistent with the manifest."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    contract: ModelContract
    dictionary: np.ndarray

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest.get("variants", {}))

    def variant_path(self, precision: str) -> Path:
        variants = self.manifest.get("variants", {})
        if precision not in variants:
            raise ValueError(
                f"precision {precision!r} is not in bundle {self.path}; it has {sorted(variants)}. "
                f"Make the variant first (e.g. `pdsn quantize`), or ask for one of those."
            )
        return self.path / variants[precision]["file"]

    @property
    def demo_weights(self) -> bool:
        return self.manifest.get("model", {}).get("weights") == "demo"


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle; with ``verify`` every listed file must exist with its recorded size and SHA-256."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    contract = ModelContract.from_dict(manifest["contract"])
    dictionary_file = path / manifest["dictionary"]["file"]
    dictionary = np.load(dictionary_file, allow_pickle=False).astype(np.float32, copy=False)
    validate_dictionary(dictionary, binary=True, argument=f"bundle dictionary {dictionary_file}")
    expected = (NUM_CELLS, *contract.feature_shape)
    if dictionary.shape != expected:
        raise BundleIntegrityError(
            f"bundle dictionary {dictionary_file} has shape {dictionary.shape}, but the model's "
            f"contract expects {expected}; re-export the bundle with a matching dictionary"
        )
    return Bundle(path, manifest, contract, dictionary)


def verify_files(path: Path, manifest: dict) -> None:
    problems = []
    for relative, entry in manifest.get("files", {}).items():
        file = path / relative
        if not file.is_file():
            problems.append(f"{relative}: missing")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"{relative}: {file.stat().st_size} bytes, manifest records {entry['bytes']} "
                f"(truncated or replaced)"
            )
        elif (digest := sha256_file(file)) != entry["sha256"]:
            problems.append(
                f"{relative}: SHA-256 {digest[:16]}..., manifest records {entry['sha256'][:16]}... "
                f"(modified after export)"
            )
    if problems:
        raise BundleIntegrityError(
            f"bundle {path} failed its integrity check:\n  "
            + "\n  ".join(problems)
            + "\nRestore the files or re-export the bundle; do not edit bundle files by hand."
        )
