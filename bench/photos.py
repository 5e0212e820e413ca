"""``pdsn bench --photos``: face detection on camera-sized frames beside facenet-pytorch's MTCNN, and the whole
photo path (decode, detect, align, embed, identify) split into its stages.

The frames are a real group photo from a registry package (insightface's t1.jpg: six people), cropped to
each frame's aspect ratio and resized, so every frame holds the same six faces. Detection runs on the
decoded frame, ours (``Recognizer.detect``, each detector backend) and facenet-pytorch's ``MTCNN.detect``
on torch at the same thresholds, minimum face and scale step, interleaved call by call so that drift in
the machine's speed falls on both. The whole path starts from the frame's JPEG bytes and ends with the
five best matches of every face in a gallery of seeded identities plus the frame's own six.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdsn.bench.machine import describe_machine
from pdsn.bench.timing import measure_interleaved
from pdsn.model.detector_contract import DEFAULT_SCALE_FACTOR, DEFAULT_THRESHOLDS

GOAL_RATIO = 2.0  # our detection's throughput over facenet-pytorch's at 640x480, min face 40 px
GOAL_FRAME = (640, 480)
STAGES = ("decode", "detect", "align", "embed", "identify")


@dataclass(frozen=True)
class PhotoBenchConfig:
    frames: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720))
    min_face: float = 40.0
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    seconds: float = 3.0
    gallery_size: int = 1000
    peer: bool = True  # facenet-pytorch's MTCNN on torch beside ours


def frame_of(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """``photo`` cropped about its centre to the aspect ratio of width x height, then resized to it."""
    from PIL import Image

    rows, columns = photo.shape[:2]
    if columns * height > rows * width:
        keep = round(rows * width / height)
        start = (columns - keep) // 2
        photo = photo[:, start : start + keep]
    else:
        keep = round(columns * height / width)
        start = (rows - keep) // 2
        photo = photo[start : start + keep]
    return np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BILINEAR))


def run_photo_benchmark(bundle: Path, config: PhotoBenchConfig, work: Path, progress: bool = True) -> dict:
    from pdsn.bench.real_photos import group_photo
    from pdsn.runtime import Recognizer, load_image

    say = print if progress else (lambda *_: None)
    photo = load_image(group_photo())
    frames = {(w, h): frame_of(photo, w, h) for w, h in config.frames}
    peer = _peer(config) if config.peer else None
    detection = []
    for backend in config.backends:
        with Recognizer.open(bundle, backend=backend, precision="fp32") as recognizer:
            for (width, height), frame in frames.items():
                say(f"detection {width}x{height} on {backend}" + (" beside facenet-pytorch" if peer else ""))
                detection.append(_detection_row(recognizer, backend, frame, config, peer))
    path = []
    for backend in config.backends:
        with Recognizer.open(bundle, backend=backend) as recognizer:
            for (width, height), frame in frames.items():
                say(f"whole path {width}x{height} on {backend} ({recognizer.precision})")
                path.append(_path_row(recognizer, backend, frame, config, work))
    return {
        "machine": describe_machine(("pdsn-deploy", "numpy", "onnxruntime", "openvino", "torch", "Pillow")),
        "config": {**asdict(config), "photo": "insightface 2.1 wheel, data/images/t1.jpg (six people)"},
        "bundle": str(bundle),
        "detection": detection,
        "path": path,
        "goals": photo_goals(detection),
    }


def _detection_row(recognizer, backend: str, frame: np.ndarray, config: PhotoBenchConfig, peer) -> dict:
    ours = lambda: recognizer.detect(frame, min_face=config.min_face)  # noqa: E731
    runs = [ours] if peer is None else [ours, lambda: peer.detect(frame)]
    stats = measure_interleaved(runs, batch=1, min_seconds=config.seconds)
    row = {
        "frame": list(frame.shape[1::-1]),
        "backend": backend,
        "faces": len(ours()),
        "ours": stats[0].to_dict(),
    }
    if peer is not None:
        boxes, _ = peer.detect(frame)
        row["peer"] = {**stats[1].to_dict(), "faces": 0 if boxes is None else len(boxes)}
        row["ratio"] = stats[0].throughput / stats[1].throughput
    return row


def _path_row(recognizer, backend: str, frame: np.ndarray, config: PhotoBenchConfig, work: Path) -> dict:
    from PIL import Image

    from pdsn.runtime import decode_image
    from pdsn.runtime.gallery import Enrollment, Gallery
    from pdsn.runtime.preprocess import align_detected

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    work.mkdir(parents=True, exist_ok=True)
    location = work / f"photos-{backend}-{frame.shape[1]}x{frame.shape[0]}.db"
    location.unlink(missing_ok=True)
    with Gallery.open(location, recognizer, create=True) as gallery:
        faces = recognizer.detect(frame, min_face=config.min_face)
        crops = np.stack([align_detected(frame, f.landmarks, recognizer.contract.alignment) for f in faces])
        own = recognizer.features(crops)
        rng = np.random.default_rng(0)
        seeded = np.abs(rng.standard_normal((config.gallery_size, own.shape[1]), dtype=np.float32))
        people = [Enrollment(f"seeded-{i:06d}", seeded[i : i + 1]) for i in range(config.gallery_size)]
        gallery.enroll_batch(people + [Enrollment(f"face-{i}", own[i : i + 1]) for i in range(len(own))])
        gallery.warm()
        timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
        started = time.perf_counter()
        while time.perf_counter() - started < config.seconds or len(timings["decode"]) < 5:
            marks = [time.perf_counter()]
            image = decode_image(data)
            marks.append(time.perf_counter())
            found = recognizer.detect(image, min_face=config.min_face)
            marks.append(time.perf_counter())
            batch = np.stack([align_detected(image, f.landmarks, recognizer.contract.alignment) for f in found])
            marks.append(time.perf_counter())
            features = recognizer.features(batch)
            marks.append(time.perf_counter())
            gallery.identify_features(features, None, k=5)
            marks.append(time.perf_counter())
            for stage, begin, end in zip(STAGES, marks, marks[1:]):
                timings[stage].append((end - begin) * 1000.0)
    split = {stage: float(np.median(values)) for stage, values in timings.items()}
    total = sum(split.values())
    return {
        "frame": list(frame.shape[1::-1]),
        "backend": backend,
        "precision": recognizer.precision,
        "faces": len(found),
        "gallery_identities": config.gallery_size + len(own),
        "iterations": len(timings["decode"]),
        "stages_ms": split,
        "total_ms": total,
        "photos_per_s": 1000.0 / total,
        "faces_per_s": 1000.0 * len(found) / total,
    }


def photo_goals(detection: list[dict]) -> list[dict]:
    """Our detection at least ``GOAL_RATIO`` x facenet-pytorch's throughput at 640x480, per backend."""
    return [
        {
            "goal": f"detection {GOAL_FRAME[0]}x{GOAL_FRAME[1]} >= {GOAL_RATIO:g}x facenet-pytorch ({row['backend']})",
            "value": row["ratio"],
            "met": row["ratio"] >= GOAL_RATIO,
        }
        for row in detection
        if tuple(row["frame"]) == GOAL_FRAME and "ratio" in row
    ]


def photos_markdown(result: dict) -> str:
    machine = result["machine"]
    config = result["config"]
    lines = [
        "# Photos: face detection and the whole photo path",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        "",
        f"Frames from {config['photo']}, cropped to the frame's aspect ratio and resized; minimum face "
        f"{config['min_face']:g} px, thresholds {list(DEFAULT_THRESHOLDS)}, scale step {DEFAULT_SCALE_FACTOR}. "
        f"Figures rest on one photo of six people; the faces column counts the detections (ours and "
        f"facenet-pytorch's agree). Command: `pdsn bench --photos --min-face {config['min_face']:g} "
        f"--seconds {config['seconds']:g}` (the bundle: {Path(result['bundle']).name}).",
        "",
        "## Detection (decoded frame in, faces out)",
        "",
        "| frame | backend | faces | ours ms p50 | ours photos/s | facenet-pytorch ms p50 | its faces | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["detection"]:
        peer = row.get("peer")
        lines.append(
            f"| {row['frame'][0]}x{row['frame'][1]} | {row['backend']} | {row['faces']} | {row['ours']['p50_ms']:.1f} "
            f"| {row['ours']['throughput_img_s']:.1f} | "
            + (f"{peer['p50_ms']:.1f} | {peer['faces']} | {row['ratio']:.2f}x |" if peer else "- | - | - |")
        )
    lines += [
        "",
        "## The whole path (JPEG bytes in, the five best matches of every face out)",
        "",
        "| frame | backend | precision | faces | gallery | "
        + " | ".join(f"{s} ms" for s in STAGES)
        + " | total ms | photos/s | faces/s |",
        "|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|",
    ]
    for row in result["path"]:
        stages = " | ".join(f"{row['stages_ms'][s]:.1f}" for s in STAGES)
        lines.append(
            f"| {row['frame'][0]}x{row['frame'][1]} | {row['backend']} | {row['precision']} | {row['faces']} | "
            f"{row['gallery_identities']} | {stages} | {row['total_ms']:.1f} | {row['photos_per_s']:.1f} | "
            f"{row['faces_per_s']:.1f} |"
        )
    lines += ["", "## Goals", ""]
    lines += [f"- {g['goal']}: {g['value']:.2f}x, {'met' if g['met'] else 'missed'}" for g in result["goals"]]
    return "\n".join(lines) + "\n"


def _peer(config: PhotoBenchConfig):
    """facenet-pytorch's MTCNN on torch with our settings, on this machine's cores."""
    import os

    import torch

    from pdsn.bench.mtcnn_peer import reference_mtcnn

    torch.set_num_threads(os.cpu_count() or 1)
    return reference_mtcnn(config.min_face, DEFAULT_THRESHOLDS, DEFAULT_SCALE_FACTOR)
