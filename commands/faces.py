"""``pdsn detect``, ``pdsn embed`` and ``pdsn compare``: faces in photos (or aligned crops) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pdsn.commands.arguments import (
    backend_options,
    bundle_options,
    cells,
    cosine,
    detection_options,
    detection_settings,
    face_choice,
    landmark_points,
    npy_path,
)
from pdsn.model.manifest import Decision

ANNOTATION_COLOURS = ((0, 200, 80), (255, 170, 0), (0, 140, 255), (230, 40, 200), (250, 250, 0))


def add_face_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``detect``, ``embed`` and ``compare``."""
    detect = commands.add_parser("detect", help="find faces in photos: boxes, scores and five landmarks")
    bundle_options(detect)
    detect.add_argument("photos", nargs="+", type=Path, help="photos (JPEG, PNG, WebP, ...)")
    detection_options(detect)
    detect.add_argument(
        "--annotate",
        type=Path,
        help="draw the faces: a .png file for one photo, or a folder (PHOTO-NAME.faces.png per photo)",
    )
    detect.set_defaults(run=_detect)

    embed = commands.add_parser("embed", help="embed the faces of photos (every face found) or aligned crops")
    bundle_options(embed)
    embed.add_argument("images", nargs="+", type=Path, help="photos, or aligned 112x96 (or 112x112) RGB crops")
    embed.add_argument("--occlusion", type=cells, help="occluded cells for every face, e.g. 10,11,12,13, or auto")
    embed.add_argument(
        "--landmarks",
        type=landmark_points,
        action="append",
        help="your own detector's 5 landmarks x1,y1,...,x5,y5, once per image in order (then no detection runs)",
    )
    embed.add_argument("--out", type=npy_path, help="write embeddings to this .npy file instead of printing")
    detection_options(embed)
    embed.set_defaults(run=_embed)

    compare = commands.add_parser("compare", help="verification score of two faces (PDSN protocol)")
    bundle_options(compare)
    compare.add_argument("image_a", type=Path, help="a photo or an aligned crop")
    compare.add_argument("image_b", type=Path)
    compare.add_argument("--occlusion-a", type=cells, help="occluded cells of image A, or auto")
    compare.add_argument("--occlusion-b", type=cells, help="occluded cells of image B, or auto")
    compare.add_argument(
        "--threshold", type=cosine, help="decide same/different at this cosine score (default: the bundle's own)"
    )
    compare.add_argument(
        "--face-a", type=face_choice, default="largest", help="which face of photo A (default largest)"
    )
    compare.add_argument(
        "--face-b", type=face_choice, default="largest", help="which face of photo B (default largest)"
    )
    detection_options(compare)
    compare.set_defaults(run=_compare)


def _open(args: argparse.Namespace):
    from pdsn.runtime import Recognizer

    return Recognizer.open(args.bundle, backend=args.backend, device=args.device, **backend_options(args))


def _detect(args: argparse.Namespace) -> int:
    settings = detection_settings(args)
    if args.annotate is not None and len(args.photos) > 1 and args.annotate.suffix.lower() == ".png":
        raise ValueError(f"--annotate {args.annotate}: with {len(args.photos)} photos give a folder, not a .png file")
    with _open(args) as recognizer:
        for photo in args.photos:
            faces = recognizer.detect(photo, settings.min_face, settings.thresholds)
            print(f"{photo}: {len(faces)} face(s) of at least {settings.min_face:g} px")
            for index, face in enumerate(faces):
                print(json.dumps({"face": index, **face_json(face)}))
            if args.annotate is not None:
                written = _annotated(photo, faces, args.annotate, single=len(args.photos) == 1)
                print(f"  drew them on {written}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    landmarks = args.landmarks
    if landmarks is not None and len(landmarks) != len(args.images):
        raise ValueError(f"--landmarks: given {len(landmarks)} times for {len(args.images)} images; give one per image")
    with _open(args) as recognizer:
        result = recognizer.embed(
            [str(path) for path in args.images], args.occlusion, landmarks, detection=detection_settings(args)
        )
        note = noted(recognizer.bundle)
    if isinstance(result, np.ndarray):
        rows = [{"image": str(path)} for path in args.images]
        embeddings = result
    else:
        rows = [{"image": str(args.images[f.image]), **({} if f.face is None else face_json(f.face))} for f in result]
        embeddings = np.stack([f.embedding for f in result])
    if args.out:
        with open(args.out, "wb") as handle:  # np.save(path) would append .npy to another suffix
            np.save(handle, embeddings)
        print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {args.out}, one per face:")
        for index, row in enumerate(rows):
            print(json.dumps({"row": index, **row, **note}))
    else:
        for row, vector in zip(rows, embeddings):
            print(json.dumps({**row, "embedding": [round(float(v), 6) for v in vector], **note}))
    return 0


def noted(bundle) -> dict:
    """``{"model_note": ...}`` for a JSON answer of a model trained on synthetic faces only, else nothing."""
    return {"model_note": bundle.model_note} if bundle.model_note else {}


def _compare(args: argparse.Namespace) -> int:
    with _open(args) as recognizer:
        bundle = recognizer.bundle
        threshold = args.threshold if args.threshold is not None else bundle.decision_threshold
        result = recognizer.verify(
            str(args.image_a),
            str(args.image_b),
            args.occlusion_a,
            args.occlusion_b,
            threshold=threshold,
            face_a=args.face_a,
            face_b=args.face_b,
            detection=detection_settings(args),
        )
    for name, face in (("A", result.face_a), ("B", result.face_b)):
        if face is not None:
            print(f"face {name}: {json.dumps(face_json(face))}")
    print(f"cosine score {result.score:.6f}  (masked cells: {result.occluded_cells or 'none'})")
    if result.match is not None:
        source = "given" if args.threshold is not None else _decision_text(bundle.manifest.decision)
        print(f"{'same person' if result.match else 'different people'} (threshold {threshold}, {source})")
    if bundle.model_note:
        print(f"note: {bundle.model_note}")
    return 0


def _decision_text(decision: Decision) -> str:
    return (
        f"the bundle's, set on {decision.same_pairs} same-person and {decision.different_pairs} "
        f"different-person pairs of real faces: FAR {decision.far:.3f}, FRR {decision.frr:.3f}"
    )


def face_json(face) -> dict:
    """A detected face as JSON: box (x1, y1, x2, y2), score, landmarks (x, y) rounded to 0.01 px."""
    return {
        "box": [round(float(v), 2) for v in face.box],
        "score": round(float(face.score), 5),
        "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
    }


def _annotated(photo: Path, faces: list, target: Path, single: bool) -> Path:
    from PIL import Image, ImageDraw

    from pdsn.runtime import load_image

    path = target if single and target.suffix.lower() == ".png" else target / f"{photo.stem}.faces.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(load_image(photo))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    for index, face in enumerate(faces):
        colour = ANNOTATION_COLOURS[index % len(ANNOTATION_COLOURS)]
        draw.rectangle([float(v) for v in face.box], outline=colour, width=width)
        draw.text((float(face.box[0]) + width, float(face.box[1]) + width), f"{index} {face.score:.2f}", fill=colour)
        for x, y in face.landmarks:
            draw.ellipse([x - width, y - width, x + width, y + width], fill=colour)
    image.save(path, format="PNG")
    return path
