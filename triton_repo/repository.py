"""``pdsn triton-repo``: a Triton Inference Server model repository from a bundle.

Three kinds of model, each with its ``config.pbtxt``:

- ``onnxruntime``: the bundle's ONNX variant on Triton's ``onnxruntime_onnx`` platform, and its
  trunk as ``<name>_features``. Triton feeds every input with each request and cannot bind the
  dictionary once, so the repository's ONNX holds the bundle's dictionary as an initializer.
- ``tensorrt``: the bundle's built engine of the precision as a ``tensorrt_plan``, when the engine
  holds its dictionary; an engine that takes the dictionary as an input is refused (see
  ``_engine``). Its trunk is served on ONNX Runtime as ``<name>_features``.
- ``python``: ``pdsn.runtime.Recognizer`` inside Triton's python backend, with the bundle copied
  into the version folder: ``<name>`` (embeddings), ``<name>_features`` (trunk features) and
  ``<name>_faces`` (the whole photo pipeline: an encoded photo in; each face's box, score,
  landmarks and embedding out).

The ``onnxruntime`` and ``tensorrt`` kinds also serve the bundle's face detector as its three nets,
``<name>_pnet``, ``<name>_rnet`` and ``<name>_onet``, on ONNX Runtime; the cascade between them (the
pyramid, box regression, NMS, crops) and the alignment run in the client.

Every config records the SHA-256 of the bundle file it was made from and of the dictionary it
binds; the ``triton`` runtime backend compares them with the bundle it was opened on.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.model.bundle_format import DETECTOR_NETS, DICTIONARY_INPUT, IMAGE_INPUT, MANIFEST_NAME, OCCLUSION_INPUT
from pdsn.model.manifest import Engine
from pdsn.runtime.backends.engines import find_engine
from pdsn.runtime.bundle import Bundle, open_bundle
from pdsn.triton_repo.configs import (
    ModelConfig,
    detector_tensors,
    embedding_tensors,
    faces_tensors,
    features_tensors,
    powers_of_two,
)

KINDS = ("onnxruntime", "tensorrt", "python")
# The runtime backends the python kind may run inside Triton.
PYTHON_BACKENDS = ("onnxruntime", "openvino", "auto")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 2000  # the Recognizer's own default max_delay_ms (2 ms)
FEATURES_SUFFIX = "_features"
FACES_SUFFIX = "_faces"
DETECTOR_SUFFIXES = {net: f"_{net}" for net in DETECTOR_NETS}
# Config parameters the triton runtime backend checks against the bundle it was opened on.
MODEL_SHA256 = "pdsn_model_sha256"
DICTIONARY_SHA256 = "pdsn_dictionary_sha256"
PRECISION = "pdsn_precision"
ROLE = "pdsn_role"
# The python backend's model.py; copied, never imported here (it needs Triton's stub to import).
PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_model.py")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

EMBEDDED_NOTE = (
    "Triton feeds every input with each request and cannot bind the mask dictionary once, so this\n"
    "model's ONNX holds the bundle's dictionary as an initializer (made by `pdsn triton-repo` from\n"
    "the bundle's {precision} variant); clients send only image and occlusion."
)


@dataclass(frozen=True)
class RepositoryRequest:
    """What to write: ``max_batch`` None means 64 (ONNX, python) or the engine profile's maximum."""

    bundle: Path
    out: Path
    precision: str = "fp32"
    kind: str = "onnxruntime"
    model_name: str = "pdsn"
    max_batch: int | None = None
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    gpu: bool = True  # onnxruntime kind: KIND_GPU instances (False: KIND_CPU)
    backend: str = "onnxruntime"  # python kind: the Recognizer's backend inside Triton
    device: str = "cpu"  # python kind: the Recognizer's device inside Triton


def dictionary_sha256(dictionary: np.ndarray) -> str:
    """The SHA-256 of the dictionary as every backend binds it (float32, C order)."""
    return hashlib.sha256(np.ascontiguousarray(dictionary, dtype=np.float32).tobytes()).hexdigest()


def write_repository(request: RepositoryRequest) -> list[Path]:
    """Write the models of ``request`` into ``request.out``; returns their folders."""
    _check(request)
    bundle = open_bundle(request.bundle, verify=True)
    if request.precision not in bundle.precisions:
        raise ValueError(
            f"bundle {bundle.path} has no {request.precision} variant (it has {', '.join(bundle.precisions)}); "
            f"make it with `pdsn quantize --bundle {bundle.path} --precision {request.precision}` or pick one of those"
        )
    if not bundle.gate_passed(request.precision):
        raise ValueError(
            f"the {request.precision} variant of {bundle.path} missed its parity gate and is kept for timing only; "
            f"it is not for serving: pick a gated precision or re-make it with `pdsn quantize`"
        )
    engine = _engine(bundle, request) if request.kind == "tensorrt" else None
    names = [request.model_name + suffix for suffix in ("", FEATURES_SUFFIX, *_detector_suffixes(bundle, request))]
    taken = [name for name in names if (request.out / name).exists()]
    if taken:
        raise FileExistsError(
            f"{request.out} already holds model folder(s) {', '.join(taken)}; remove them or choose another "
            f"--out or --model-name"
        )
    written: list[Path] = []
    try:
        if request.kind == "python":
            written += _python_models(bundle, request)
        else:
            written.append(_platform_model(bundle, request, engine))
            written.append(_trunk_model(bundle, request))
            written += _detector_models(bundle, request)
        (request.out / "README.md").write_text(_readme(bundle, request), encoding="utf-8")
    except BaseException:
        for folder in written + [request.out / name for name in names]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return written


def embed_dictionary(model_path: Path, dictionary: np.ndarray, out: Path) -> None:
    """Write ``model_path`` with its ``fdm_dictionary`` graph input turned into an initializer of ``dictionary``.

    The FDM node reads the dictionary by name, so nothing else in the graph changes; the result
    is what ``pdsn export --embed-dictionary`` writes for the same weights.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ImportError('pdsn triton-repo needs onnx to embed the dictionary: pip install "onnx>=1.16"') from exc
    proto = onnx.load(str(model_path))
    graph = proto.graph
    inputs = [i for i in graph.input if i.name == DICTIONARY_INPUT]
    if len(inputs) != 1:
        raise ValueError(
            f"{model_path} has no {DICTIONARY_INPUT!r} graph input (its inputs: "
            f"{', '.join(i.name for i in graph.input)}); only a bundle whose contract binds the dictionary as an "
            f"input needs it embedded"
        )
    graph.input.remove(inputs[0])
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(dictionary, np.float32), DICTIONARY_INPUT))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def _check(request: RepositoryRequest) -> None:
    if request.kind not in KINDS:
        raise ValueError(f"--kind {request.kind!r} is not one of {KINDS}")
    if request.precision not in PRECISIONS:
        raise ValueError(f"--precision {request.precision!r} is not one of {PRECISIONS}")
    if request.backend not in PYTHON_BACKENDS:
        raise ValueError(f"the python model's backend {request.backend!r} is not one of {PYTHON_BACKENDS}")
    if not _MODEL_NAME.fullmatch(request.model_name):
        raise ValueError(
            f"--model-name {request.model_name!r}: expected letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit (it names a folder of the repository)"
        )
    if request.max_batch is not None and request.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {request.max_batch}")
    if request.instances < 1 or request.max_queue_delay_us < 0:
        raise ValueError(
            f"--instances must be >= 1 (got {request.instances}) and --max-queue-delay-us >= 0 "
            f"(got {request.max_queue_delay_us})"
        )


def _engine(bundle: Bundle, request: RepositoryRequest) -> Engine:
    """The TensorRT engine to serve, refused when it takes the dictionary as an input.

    Triton's tensorrt backend feeds every engine input from the request, so an engine that binds
    the dictionary (the float32 one or the FDM plugin's packed one) would need every client to
    send it with every face.
    """
    try:
        entry = find_engine(bundle.manifest, "tensorrt", request.precision)
    except ValueError:
        have = sorted(f"{e.flavour}/{e.precision}" for e in bundle.manifest.engines.values())
        raise ValueError(
            f"--kind tensorrt: bundle {bundle.path} has no TensorRT engine for {request.precision} (it has "
            f"{', '.join(have) or 'no engines'}); build one with `pdsn build --bundle {bundle.path} --precision "
            f"{request.precision} --flavour tensorrt`, or serve the ONNX variant with --kind onnxruntime"
        ) from None
    inputs = set(entry.inputs or ([DICTIONARY_INPUT] if bundle.contract.dictionary_binding == "input" else []))
    bound = sorted(inputs - {IMAGE_INPUT, OCCLUSION_INPUT})
    if bound:
        raise ValueError(
            f"--kind tensorrt: engine {entry.file} takes the mask dictionary as the input {', '.join(bound)}, "
            f"which Triton's tensorrt backend cannot bind once (every request would have to carry it). Serve "
            f"this bundle with --kind onnxruntime (the dictionary is embedded in the repository's ONNX) or "
            f"--kind python (the pdsn runtime binds it), or export with `pdsn export --embed-dictionary` and "
            f"build the engine from that bundle"
        )
    profile = entry.profile
    if request.max_batch is not None and request.max_batch > profile.max:
        raise ValueError(
            f"--max-batch {request.max_batch} exceeds engine {entry.file}'s profile (batch "
            f"{profile.min}..{profile.max}); pass --max-batch <= {profile.max} or rebuild with "
            f"`pdsn build --batch MIN,OPT,MAX`"
        )
    return entry


def _platform_model(bundle: Bundle, request: RepositoryRequest, engine: Engine | None) -> Path:
    """The onnxruntime_onnx or tensorrt_plan model of the recognition model."""
    folder = request.out / request.model_name
    (folder / "1").mkdir(parents=True)
    variant = bundle.manifest.variants[request.precision]
    source_sha = bundle.manifest.sha256_of(variant.file)
    if engine is not None:
        shutil.copyfile(bundle.file(engine.file), folder / "1" / "model.plan")
        low, high = engine.profile.min, request.max_batch or engine.profile.max
        platform, kind = "tensorrt_plan", "KIND_GPU"
        source_sha = engine.variant_sha256
        comment = (
            f"pdsn {request.precision} TensorRT engine {engine.file} of bundle {bundle.path.name}; the engine "
            f"holds the mask dictionary"
        )
    else:
        source = bundle.variant_path(request.precision)
        if bundle.contract.dictionary_binding == "input":
            embed_dictionary(source, bundle.dictionary, folder / "1" / "model.onnx")
            comment = EMBEDDED_NOTE.format(precision=request.precision)
        else:
            shutil.copyfile(source, folder / "1" / "model.onnx")
            comment = f"pdsn {request.precision} ONNX variant of bundle {bundle.path.name}; exported with the dictionary embedded"
        low, high = 1, request.max_batch or DEFAULT_MAX_BATCH
        platform, kind = "onnxruntime_onnx", "KIND_GPU" if request.gpu else "KIND_CPU"
    _write_config(
        folder,
        request,
        embedding_tensors(bundle.contract),
        (low, high),
        platform=platform,
        instance_kind=kind,
        parameters=_identity(bundle, request, "embedding", source_sha),
        comment=comment,
    )
    return folder


def _trunk_model(bundle: Bundle, request: RepositoryRequest) -> Path:
    """``<name>_features``: the variant's trunk ONNX (image -> feature map) on ONNX Runtime."""
    name = request.model_name + FEATURES_SUFFIX
    folder = request.out / name
    (folder / "1").mkdir(parents=True)
    trunk_file = _trunk_file(bundle, request.precision)
    shutil.copyfile(bundle.file(trunk_file), folder / "1" / "model.onnx")
    high = request.max_batch or DEFAULT_MAX_BATCH
    if request.kind == "tensorrt":
        high = min(high, _engine(bundle, request).profile.max)
    _write_config(
        folder,
        request,
        features_tensors(bundle.contract),
        (1, high),
        platform="onnxruntime_onnx",
        instance_kind="KIND_GPU" if request.gpu or request.kind == "tensorrt" else "KIND_CPU",
        parameters=_identity(bundle, request, "features", bundle.manifest.sha256_of(trunk_file)),
        comment=f"pdsn {request.precision} trunk of bundle {bundle.path.name}: image -> features before the mask",
    )
    return folder


def _python_models(bundle: Bundle, request: RepositoryRequest) -> list[Path]:
    """``<name>`` and ``<name>_features`` on the python backend; the bundle lives in ``<name>/1/bundle``."""
    folders = []
    high = request.max_batch or DEFAULT_MAX_BATCH
    variant = bundle.manifest.variants[request.precision]
    roles = {
        request.model_name: ("embedding", embedding_tensors, variant.file, "bundle"),
        request.model_name + FEATURES_SUFFIX: (
            "features",
            features_tensors,
            _trunk_file(bundle, request.precision),
            f"../../{request.model_name}/1/bundle",
        ),
    }
    if bundle.manifest.detector is not None:
        roles[request.model_name + FACES_SUFFIX] = (
            "faces",
            faces_tensors,
            variant.file,
            f"../../{request.model_name}/1/bundle",
        )
    for name, (role, tensors, source, bundle_path) in roles.items():
        folder = request.out / name
        (folder / "1").mkdir(parents=True)
        folders.append(folder)
        shutil.copyfile(PYTHON_MODEL_SOURCE, folder / "1" / "model.py")
        parameters = {
            **_identity(bundle, request, role, bundle.manifest.sha256_of(source)),
            "bundle": bundle_path,
            "backend": request.backend,
            "device": request.device,
            "max_batch": str(high),
        }
        _write_config(
            folder,
            request,
            tensors(bundle.contract),
            (0, 0) if role == "faces" else (1, high),
            backend="python",
            instance_kind="KIND_CPU",
            parameters=parameters,
            comment=(
                f"pdsn.runtime.Recognizer ({role}) on the python backend over the {request.precision} variant of\n"
                f"the bundle at {bundle_path} (from the version folder; opened with verify=True); the runtime binds the mask dictionary, so\n"
                + (
                    "clients send an encoded photo (and the smallest face side to find); the faces' boxes, scores,\n"
                    "landmarks and embeddings come back, one row each."
                    if role == "faces"
                    else f"clients send only image{' and occlusion' if role == 'embedding' else ''}."
                )
            ),
        )
    _copy_bundle(bundle, request.out / request.model_name / "1" / "bundle")
    return folders


def _detector_rows(bundle: Bundle, request: RepositoryRequest) -> str:
    """The README's rows of the detector's models, and where the photo pipeline runs."""
    suffixes = _detector_suffixes(bundle, request)
    if not suffixes:
        return ""
    name = request.model_name
    if request.kind == "python":
        return (
            f"| `{name}{FACES_SUFFIX}` | photo (the encoded file, BYTES [1]), min_face [1] (pixels) | boxes [-1, 4], "
            f"scores [-1], landmarks [-1, 5, 2], embedding [-1, {bundle.contract.embedding_size}]: one row per face, "
            f"the whole pipeline (decode, detect, align, embed) in Triton |\n"
        )
    return "".join(
        f"| `{name}{suffix}` | image (float32 NCHW, (pixel - 127.5) / 128) | the MTCNN {suffix[1:]}'s outputs; the "
        f"cascade around the nets (pyramid, box regression, NMS, crops) and the alignment run in the client |\n"
        for suffix in suffixes
    )


def _detector_suffixes(bundle: Bundle, request: RepositoryRequest) -> tuple[str, ...]:
    """The detector's model names (after the model name): the photo pipeline (python kind) or its three nets."""
    if bundle.manifest.detector is None:
        return ()
    return (FACES_SUFFIX,) if request.kind == "python" else tuple(DETECTOR_SUFFIXES.values())


def _detector_models(bundle: Bundle, request: RepositoryRequest) -> list[Path]:
    """``<name>_pnet``, ``_rnet`` and ``_onet``: the detector's nets on ONNX Runtime, one request at a time."""
    entry = bundle.manifest.detector
    if entry is None:
        return []
    folders = []
    for net, suffix in DETECTOR_SUFFIXES.items():
        folder = request.out / (request.model_name + suffix)
        (folder / "1").mkdir(parents=True)
        folders.append(folder)
        source = entry.files[net]
        shutil.copyfile(bundle.file(source, f"detector.files.{net}"), folder / "1" / "model.onnx")
        _write_config(
            folder,
            request,
            detector_tensors(net),
            (0, 0),
            platform="onnxruntime_onnx",
            instance_kind="KIND_GPU" if request.gpu else "KIND_CPU",
            parameters={MODEL_SHA256: bundle.manifest.sha256_of(source), ROLE: f"detector-{net}"},
            comment=(
                f"the face detector's {net} (MTCNN) of bundle {bundle.path.name}; the cascade around it runs in the "
                f"client (the bundle's manifest has its contract)"
            ),
        )
    return folders


def _write_config(folder: Path, request: RepositoryRequest, tensors: tuple, batch: tuple[int, int], **fields) -> None:
    """``folder/config.pbtxt`` for batch sizes ``batch`` (min, max) with the request's batching and instances;
    (0, 0): no batching, one request at a time."""
    low, high = batch
    config = ModelConfig(
        name=folder.name,
        inputs=tensors[0],
        outputs=tensors[1],
        max_batch_size=high,
        preferred_batch_sizes=powers_of_two(low, high) if high else (),
        max_queue_delay_us=request.max_queue_delay_us,
        instances=request.instances,
        **fields,
    )
    (folder / "config.pbtxt").write_text(config.text(), encoding="utf-8")


def _copy_bundle(bundle: Bundle, target: Path) -> None:
    """The manifest and exactly the files it lists, then checked as ``open_bundle(verify=True)`` will."""
    target.mkdir(parents=True)
    for relative in [MANIFEST_NAME, *bundle.manifest.files]:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.path / relative, target / relative)
    open_bundle(target, verify=True, expected_digest=bundle.digest)


def _trunk_file(bundle: Bundle, precision: str) -> str:
    trunk_file = bundle.manifest.variants[precision].trunk_file
    if trunk_file is None:
        raise ValueError(
            f"bundle {bundle.path} has no trunk model for {precision} (made by an older pdsn-deploy); re-export it "
            f"with `pdsn export` and re-make its variants"
        )
    return trunk_file


def _identity(bundle: Bundle, request: RepositoryRequest, role: str, model_sha256: str) -> dict[str, str]:
    return {
        MODEL_SHA256: model_sha256,
        DICTIONARY_SHA256: dictionary_sha256(bundle.dictionary),
        PRECISION: request.precision,
        ROLE: role,
    }


def _readme(bundle: Bundle, request: RepositoryRequest) -> str:
    name, features = request.model_name, request.model_name + FEATURES_SUFFIX
    if request.kind == "python":
        how = (
            f"`{name}` and `{features}` run `pdsn.runtime.Recognizer` on Triton's python backend "
            f"({request.backend} on {request.device}), over the bundle copied into `{name}/1/bundle/` and "
            f"opened with its hashes checked. The runtime binds the mask dictionary itself. The server's "
            f"Python environment needs pdsn-deploy with numpy < 2 (the python backend stub of Triton 2.51 "
            f"returns empty outputs under numpy 2): see `scripts/triton-env.sh`."
        )
    else:
        platform = "tensorrt_plan (the bundle's engine)" if request.kind == "tensorrt" else "onnxruntime_onnx"
        how = f"`{name}` runs on {platform}; `{features}` runs the variant's trunk on onnxruntime_onnx."
        if request.kind == "onnxruntime" and bundle.contract.dictionary_binding == "input":
            how += " " + EMBEDDED_NOTE.format(precision=request.precision).replace("\n", " ")
    return (
        f"# Triton model repository for {bundle.path.name} ({request.precision})\n\n"
        f"Written by `pdsn triton-repo --kind {request.kind}`. {how}\n\n"
        f"| model | inputs | output |\n|---|---|---|\n"
        f"| `{name}` | image, occlusion [25] (1 = occluded) | embedding [{bundle.contract.embedding_size}] |\n"
        f"| `{features}` | image | features {list(bundle.contract.feature_shape)} (before the mask) |\n"
        f"{_detector_rows(bundle, request)}\n"
        f"Image: {bundle.contract.image_layout} {list(bundle.contract.image_shape)}. Clients: "
        f'`Recognizer.open(bundle, backend="triton", url=..., protocol="grpc"|"http", model_name="{name}")` '
        f"with the same bundle; it checks each model's `{MODEL_SHA256}` and `{DICTIONARY_SHA256}` parameters "
        f"against the bundle.\n\nStart: `tritonserver --model-repository {request.out}`.\n"
    )


__all__ = ["KINDS", "PYTHON_BACKENDS", "RepositoryRequest", "dictionary_sha256", "embed_dictionary", "write_repository"]
