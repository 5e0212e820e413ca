"""Reading and writing checkpoints in the reference code's format.

A checkpoint is untrusted input: it is always read with ``weights_only=True``. Accepted forms:
``{'epoch', 'optim_state_dict', 'model_state_dict'}`` (also ``state_dict`` as the inner key), a
bare state dict, and either with the ``module.`` prefix that ``DataParallel`` adds.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import sha256_file
from pdsn.model.network import ARCHITECTURES, Architecture, LResNetIR, PDSNNetwork
from pdsn.model.recognition import NetworkArchitecture, RecognitionNetwork

if TYPE_CHECKING:
    from pdsn.model.dlib_resnet import DlibResNet

log = logging.getLogger(__name__)

_NESTED_KEYS = ("model_state_dict", "state_dict")
# Keys that only dlib's face ResNet (``pdsn.model.dlib_resnet``) has: its input means and first step.
DLIB_STATE_KEYS = ("means", "steps.0.weight")
_MASK_GENERATOR_PREFIX = "sia."
_DATA_PARALLEL_PREFIX = "module."


class CheckpointError(PdsnError, ValueError):
    """A file that cannot be used as a checkpoint for the requested model."""


class CheckpointMismatchError(CheckpointError):
    """The state dict does not fit the network: lists every missing, unexpected and misshapen key."""

    def __init__(
        self,
        path: str,
        missing: list[str],
        unexpected: list[str],
        misshapen: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        architecture: NetworkArchitecture,
    ) -> None:
        self.missing, self.unexpected, self.misshapen = missing, unexpected, misshapen
        shape = architecture.to_dict()
        details = ", ".join(f"{key}={shape[key]}" for key in ("layers", "widths") if key in shape)
        lines = [f"checkpoint {path} does not fit {architecture.name}" + (f" ({details}):" if details else ":")]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_abbreviate(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_abbreviate(unexpected)}")
        for key, got, expected in misshapen[:20]:
            lines.append(f"  wrong shape: {key} is {list(got)}, expected {list(expected)}")
        if len(misshapen) > 20:
            lines.append(f"  ... and {len(misshapen) - 20} more wrongly shaped keys")
        lines.append(
            "  Pass the architecture the checkpoint was trained with (--architecture), or let it be "
            "inferred from the checkpoint by not passing one."
        )
        super().__init__("\n".join(lines))


@dataclass
class CheckpointInfo:
    path: str
    sha256: str
    layout: str
    data_parallel_prefix: bool
    epoch: int | None
    ignored_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "layout": self.layout,
            "data_parallel_prefix": self.data_parallel_prefix,
            "epoch": self.epoch,
            "ignored_keys": len(self.ignored_keys),
        }


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read a checkpoint file safely and return its (un-prefixed) state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    if not _looks_like_torch_save(path):
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint file (neither a torch.save zip archive "
            f"nor a pickle); expected a file written by torch.save"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain containers, and was "
            f"refused (checkpoints are untrusted input and are read with weights_only=True). "
            f"Re-save it as torch.save({{'model_state_dict': model.state_dict()}}). Detail: {exc}"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint file (torch.load failed: {exc}); "
            f"expected a file written by torch.save"
        ) from None

    if not isinstance(content, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(content).__name__}, expected a dict: a state dict "
            f"or {{'model_state_dict': ...}}"
        )
    layout, epoch = "bare", None
    for key in _NESTED_KEYS:
        if key in content:
            layout, epoch = f"nested:{key}", _epoch_of(content.get("epoch"))
            content = content[key]
            break
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint {path}: the state dict is a {type(content).__name__}")
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(content):
        raise CheckpointError(
            f"checkpoint {path} has no state dict: top-level keys are {_abbreviate(list(content))}; "
            f"expected tensors keyed by parameter name, or a dict with 'model_state_dict'"
        )
    prefixed = all(k.startswith(_DATA_PARALLEL_PREFIX) for k in tensors)
    if prefixed:
        tensors = {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in tensors.items()}
    info = CheckpointInfo(str(path), sha256_file(path), layout, prefixed, epoch)
    return tensors, info


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> Architecture:
    """Read depth and width off the parameter names and shapes of an LResNet-IR state dict."""
    try:
        stem = state_dict["conv1.weight"]
        embedding_size = int(state_dict["fc.2.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(
            f"state dict does not look like an LResNet-IR network: no {exc.args[0]!r} key "
            f"(first keys: {_abbreviate(list(state_dict))})"
        ) from None
    if stem.ndim != 4 or stem.shape[1] != 3:
        raise CheckpointError(f"conv1.weight has shape {list(stem.shape)}; only 3-channel RGB models are supported")
    layers, widths = [], [int(stem.shape[0])]
    for stage in range(1, 5):
        pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
        blocks = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        first = state_dict.get(f"layer{stage}.0.conv1.weight")
        if not blocks or first is None:
            raise CheckpointError(f"state dict has no blocks for stage layer{stage}")
        layers.append(max(blocks) + 1)
        widths.append(int(first.shape[0]))
    for known in ARCHITECTURES.values():
        if (known.layers, known.widths, known.embedding_size) == (tuple(layers), tuple(widths), embedding_size):
            return known
    return Architecture("lresnet-ir-custom", tuple(layers), tuple(widths), embedding_size)  # type: ignore[arg-type]


def load_recognition_model(
    path: str | Path, architecture: Architecture | None = None
) -> tuple[RecognitionNetwork, CheckpointInfo]:
    """Load the recognition network in eval mode; mask-generator (``sia.*``) keys are ignored.

    An LResNet-IR checkpoint gives an ``LResNetIR`` (``architecture`` inferred when None); one written by
    ``pdsn import dlib`` gives dlib's face ResNet (``DlibResNet``), whose layers are fixed.
    """
    state, info = read_state_dict(path)
    info.ignored_keys = sorted(k for k in state if k.startswith(_MASK_GENERATOR_PREFIX))
    if info.ignored_keys:
        log.info(
            "checkpoint %s: ignoring %d mask-generator keys (sia.*) for the recognition model",
            path,
            len(info.ignored_keys),
        )
        state = {k: v for k, v in state.items() if not k.startswith(_MASK_GENERATOR_PREFIX)}
    if all(key in state for key in DLIB_STATE_KEYS):
        from pdsn.model.dlib_resnet import DlibResNet

        return _load_dlib(DlibResNet(), state, info, architecture), info
    model = LResNetIR(architecture or infer_architecture(state))
    _load_strict(model, state, str(path))
    return model.eval(), info


def _load_dlib(
    model: DlibResNet, state: dict[str, torch.Tensor], info: CheckpointInfo, architecture: Architecture | None
):
    if architecture is not None:
        raise CheckpointError(
            f"checkpoint {info.path} holds dlib's face ResNet v1, whose layers are fixed; --architecture "
            f"{architecture.name} applies to LResNet-IR checkpoints only. Leave it out"
        )
    _load_strict(model, state, info.path)
    return model.eval()


def load_pdsn_model(path: str | Path, architecture: Architecture | None = None) -> tuple[PDSNNetwork, CheckpointInfo]:
    """Load a stage-1 model (recognition network plus ``sia`` mask generator) in eval mode."""
    state, info = read_state_dict(path)
    if all(key in state for key in DLIB_STATE_KEYS):
        from pdsn.model.dlib_resnet import DlibPDSN

        return _load_dlib(DlibPDSN(), state, info, architecture), info
    model = PDSNNetwork(architecture or infer_architecture(state))
    _load_strict(model, state, str(path))
    return model.eval(), info


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict's names and tensor bytes, in order: the same weights give the same digest
    whatever file they were saved in (``torch.save``'s bytes also depend on the file's name)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    epoch: int = 0,
    optim_state_dict: dict | None = None,
) -> None:
    """Write ``{'epoch', 'optim_state_dict', 'model_state_dict'}`` as the reference code does."""
    torch.save(
        {
            "epoch": epoch,
            "optim_state_dict": optim_state_dict or {},
            "model_state_dict": model.state_dict(),
        },
        Path(path),
    )


def _load_strict(model: LResNetIR | DlibResNet, state: dict[str, torch.Tensor], path: str) -> None:
    expected = model.state_dict()
    # Checkpoints from before BatchNorm counted batches lack these; they carry no weights.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        raise CheckpointMismatchError(path, missing, unexpected, misshapen, model.architecture)
    full = dict(expected)
    full.update({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.load_state_dict(full, strict=True)


def _looks_like_torch_save(path: Path) -> bool:
    with open(path, "rb") as handle:
        legacy_pickle = handle.read(1) == b"\x80"  # pickle protocol >= 2 opcode
    return legacy_pickle or zipfile.is_zipfile(path)


def _epoch_of(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return int(value.item())
    return None


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")
