"""``pdsn demo --photo PHOTO``: the main job on a real photo with the default model, in plain words.

dlib's face ResNet (the shipped default, with its PDSN dictionary) is exported and checked against
PyTorch; every face in the photo is found, aligned and enrolled in a gallery; then each face is
covered in the photo by a drawn occluder (sunglasses, a scarf, a hand, a face mask) and identified
again from the occluded photo, with and without FDM, beside the cells the occluder covers (and the
ones the bundle's occlusion estimator finds, where it has one). Each face enrolled is one person: a
group photo holds no one twice.
"""

from __future__ import annotations

import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from pdsn.model.manifest import Decision

OCCLUDERS = ("sunglasses", "face_mask", "hand", "scarf")


def run_photo_demo(photo: Path, out: Path, min_face: float = 40.0) -> int:
    from pdsn.bench.timing_bundle import existing_bundle
    from pdsn.export.bundle_writer import ExportRequest, export_bundle
    from pdsn.export.parity import format_parity_table
    from pdsn.runtime import Recognizer, load_image
    from pdsn.runtime.gallery import Gallery
    from pdsn.runtime.photos import DetectionSettings

    print("pdsn-deploy demo: dlib's face ResNet (public domain) with its PDSN dictionary, on a real photo\n")
    started = time.perf_counter()
    existing = existing_bundle(out, "dlib-face-resnet-v1")
    result = export_bundle(ExportRequest(out=out, overwrite=existing is not None))
    decision = result.manifest.decision
    print(f"[1/4] exported {out}/ in {time.perf_counter() - started:.0f} s; ONNX Runtime against PyTorch:")
    print(textwrap.indent(format_parity_table(result.parity), " " * 6))
    image = load_image(photo)
    settings = DetectionSettings(min_face=min_face)
    with (
        Recognizer.open(out) as recognizer,
        tempfile.TemporaryDirectory(prefix="pdsn-demo-") as folder,
        Gallery.open(Path(folder) / "gallery.db", recognizer, create=True) as gallery,
    ):
        faces = sorted(recognizer.detect(image, min_face=min_face), key=lambda face: face.box[0])
        print(
            f"\n[2/4] {photo.name}: {len(faces)} faces found; each enrolled as one person, named by its place "
            f"from the left"
        )
        for number, face in enumerate(faces, start=1):
            gallery.enroll(f"person-{number}", image, landmarks=face.landmarks)
            x0, y0, x1, y1 = face.box
            print(
                f"      person-{number}: box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}), detector score {face.score:.3f}"
            )
        has_estimator = recognizer.bundle.manifest.estimator is not None
        print(
            f"\n[3/4] each face covered in the photo by a drawn occluder and identified again from the "
            f"occluded photo (threshold {decision.threshold}):"
        )
        rng = np.random.default_rng(2026)
        for number, face in enumerate(faces, start=1):
            kind = OCCLUDERS[(number - 1) % len(OCCLUDERS)]
            occluded, cells = _occluded_photo(image, face.landmarks, kind, rng, recognizer.contract.alignment)
            print(
                f"      person-{number} behind {kind.replace('_', ' ')}, covering cells {cells or 'none (under half of any)'}:"
            )
            plain = _identified(gallery, occluded, face, None, settings)
            if plain is None:
                print("          the detector does not find this face behind the occluder")
                continue
            print(f"          no FDM:           {_match_text(plain, decision)}")
            print(
                f"          FDM, true cells:  {_match_text(_identified(gallery, occluded, face, cells, settings), decision)}"
            )
            if has_estimator:
                auto = _identified(gallery, occluded, face, "auto", settings)
                print(f"          FDM, estimator's cells {auto.occluded_cells}: {_match_text(auto, decision)}")
        if not has_estimator:
            print(
                "      (this bundle has no occlusion estimator for dlib's chips yet, so occlusion='auto' is not shown)"
            )
        scores = [
            recognizer.verify(image, image, face_a=a, face_b=b, detection=settings).score
            for a in range(len(faces))
            for b in range(a + 1, len(faces))
        ]
    print(
        f"\n[4/4] the decision threshold {decision.threshold} was set on {decision.same_pairs} same-person "
        f"and {decision.different_pairs} different-person pairs of real faces ({decision.faces} faces, "
        f"{decision.people} people): FAR {decision.far:.3f}, FRR {decision.frr:.3f}. In this photo the "
        f"highest score between two different people is {max(scores):.4f}, over {len(scores)} pairs."
    )
    return 0


def _occluded_photo(image: np.ndarray, landmarks: np.ndarray, kind: str, rng, alignment: str):
    """The photo with one occluder drawn over the face, and the grid cells it covers in the face's crop.

    The occluder is drawn in the face's aligned crop (placed from the crop's landmarks) and mapped back
    into the photo through the alignment, so the photo shows it where the crop has it.
    """
    from PIL import Image

    from pdsn.model.alignment import estimate_similarity
    from pdsn.model.crop_alignment import CROP_ALIGNMENTS
    from pdsn.model.grid import NUM_CELLS
    from pdsn.train.occlusion import occlude

    crop = CROP_ALIGNMENTS[alignment]
    blank = np.zeros((crop.height, crop.width, 3), dtype=np.uint8)
    drawn = occlude(blank, kind, rng, landmarks=crop.template)
    to_crop = estimate_similarity(landmarks, crop.template)
    forward = np.vstack([to_crop, [0.0, 0.0, 1.0]])
    coefficients = tuple(forward[:2].ravel())  # Pillow maps each photo pixel through this into the crop
    size = (image.shape[1], image.shape[0])
    colours = Image.fromarray(drawn.image).transform(
        size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    mask = Image.fromarray(drawn.mask.astype(np.uint8) * 255).transform(
        size, Image.Transform.AFFINE, coefficients, Image.Resampling.NEAREST
    )
    covered = np.asarray(mask) > 127
    occluded = image.copy()
    occluded[covered] = np.asarray(colours)[covered]
    return occluded, [cell for cell in range(NUM_CELLS) if drawn.cells[cell]]


def _identified(gallery, photo: np.ndarray, face, occlusion, settings):
    """The identification of the face found where ``face`` is in the occluded photo; None if none is."""
    results = gallery.identify(photo, occlusion=occlusion, k=1, detection=settings)
    centre = np.asarray(face.landmarks).mean(axis=0)
    distance = {id(r): float(np.linalg.norm(np.asarray(r.face.landmarks).mean(axis=0) - centre)) for r in results}
    nearest = min(results, key=lambda r: distance[id(r)])
    return nearest if distance[id(nearest)] < (face.box[2] - face.box[0]) / 3 else None


def _match_text(identification, decision: Decision) -> str:
    best = identification.matches[0]
    verdict = "above" if best.score >= decision.threshold else "below"
    return f"best match {best.identity}, score {best.score:.4f} ({verdict} the threshold)"
