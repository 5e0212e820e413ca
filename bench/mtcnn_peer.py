"""facenet-pytorch's MTCNN on torch, loaded from its cached wheel: the detector's reference and benchmark peer.

facenet-pytorch imports torchvision for ``batched_nms`` (and ``to_tensor``, used only when
extracting faces); torchvision cannot be installed beside this torch, so ``torchvision_stand_in``
provides those two, per torchvision's documentation, while facenet-pytorch's modules are imported.
Only ``facenet_pytorch.models.mtcnn`` is loaded (not the package's ``__init__``, which pulls in the
recognition model and its downloader).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
import zipfile

import numpy as np
import torch

from pdsn.bench.real_photos import cache_dir, facenet_wheel


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms: drop boxes whose IoU with a higher-scoring kept box is > iou_threshold;
    kept indices by decreasing score. Boxes (x1, y1, x2, y2), areas (x2 - x1) * (y2 - y1)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = width * height
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.double() > iou_threshold
    return torch.as_tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.batched_nms: NMS within each category of ``idxs`` only; kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    keep = torch.cat(
        [
            torch.nonzero(idxs == c).flatten()[nms(boxes[idxs == c], scores[idxs == c], iou_threshold)]
            for c in torch.unique(idxs)
        ]
    )
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def to_tensor(picture) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for HWC arrays: CHW, uint8 scaled to [0, 1]."""
    array = np.asarray(picture)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return tensor.float().div(255) if array.dtype == np.uint8 else tensor.float()


@contextlib.contextmanager
def torchvision_stand_in():
    """``torchvision.ops.boxes.batched_nms`` and ``torchvision.transforms.functional.to_tensor`` in
    sys.modules for the duration; whatever was there before is put back."""
    names = (
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.boxes",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    )
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    modules["torchvision.ops.boxes"].batched_nms = batched_nms
    modules["torchvision.ops.boxes"].nms = nms
    modules["torchvision.transforms.functional"].to_tensor = to_tensor
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@functools.cache
def facenet_mtcnn_module() -> types.ModuleType:
    """``facenet_pytorch.models.mtcnn`` from the cached wheel (its data/*.pt beside it)."""
    root = cache_dir() / "facenet-pytorch-2.6.0"
    if not (root / "facenet_pytorch" / "data" / "onet.pt").is_file():
        with zipfile.ZipFile(facenet_wheel()) as wheel:
            wheel.extractall(root, [m for m in wheel.namelist() if m.startswith("facenet_pytorch/")])
    for name in ("facenet_pytorch", "facenet_pytorch.models", "facenet_pytorch.models.utils"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = package
    with torchvision_stand_in():
        return importlib.import_module("facenet_pytorch.models.mtcnn")


def reference_mtcnn(min_face: float = 20, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
    """facenet-pytorch's MTCNN on the CPU, every face kept, highest probability first."""
    module = facenet_mtcnn_module()
    return module.MTCNN(
        min_face_size=min_face, thresholds=list(thresholds), factor=factor, keep_all=True, select_largest=False
    ).eval()


def reference_detect(mtcnn, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float64 (n, 4), scores (n,), landmarks (n, 5, 2)) of a uint8 RGB image, highest score first."""
    boxes, scores, points = mtcnn.detect(image, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return boxes.astype(np.float64), np.asarray(scores, np.float64), points.astype(np.float64)
