"""``Recognizer``: the application-facing API over a bundle and a backend."""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.errors import InputError
from pdsn.model.folded_head import FoldedHead
from pdsn.model.grid import NUM_CELLS
from pdsn.model.occlusion import Occlusion, as_vectors, from_checked_vectors
from pdsn.model.validation import check_int, check_real
from pdsn.runtime.backends import ENGINE_BACKENDS, create_backend, resolve_backend
from pdsn.runtime.backends.engines import find_engine, named_engine
from pdsn.runtime.batcher import (
    BatcherClosedError,
    BatcherHealth,
    BatcherStats,
    DynamicBatcher,
    check_settings,
)
from pdsn.runtime.bundle import Bundle, open_bundle
from pdsn.runtime.detection import DetectedFace
from pdsn.runtime.face_finder import ALL_FACES, FaceFinder, Located
from pdsn.runtime.futures import joined, then
from pdsn.runtime.inputs import prepare_images, prepare_occlusion
from pdsn.runtime.occlusion_estimator import AUTO, ESTIMATOR_BACKENDS, OcclusionEstimator
from pdsn.runtime.photos import LARGEST, DetectionSettings, check_face_choice
from pdsn.runtime.verification import PairScore, pair_faces, pair_score

PRECISIONS = ("auto", "fp32", "fp16", "int8")
# "auto" takes the first gated variant in the bundle from this order. CPUs (bench/results): INT8
# Q/DQ was the fastest path; FP16 gained nothing consistent over FP32 (within run-to-run noise),
# so the exact FP32 comes next. NVIDIA GPUs: by their arithmetic rates (INT8 > FP16 > FP32 on
# tensor cores); not yet measured in this project.
AUTO_ORDER = {"cpu": ("int8", "fp32", "fp16"), "cuda": ("int8", "fp16", "fp32")}


@dataclass(frozen=True)
class Verification:
    """Result of comparing two faces under the PDSN protocol."""

    score: float
    occluded_cells: list[int]
    match: bool | None = None
    face_a: DetectedFace | None = None  # the face compared, when image_a was a photo
    face_b: DetectedFace | None = None


@dataclass(frozen=True, eq=False)  # its embedding is an array: equal only to itself
class FaceEmbedding:
    """One face found in a photo given to ``Recognizer.embed``: where it is, and its embedding."""

    image: int  # which of the images given
    face: DetectedFace | None  # None: that image was an aligned crop
    embedding: np.ndarray
    occluded_cells: list[int]  # the cells that masked the embedding


class Recognizer:
    """Embeds aligned faces with the bundle's model; the mask dictionary stays bound in the backend.

    Every call, from any thread, goes through one dynamic batcher (``pdsn.runtime.batcher``), so
    concurrent callers share batches and the backend is only ever called from its worker thread.
    The batcher releases the backend when it stops. Close the Recognizer when done; one dropped
    unclosed is closed when garbage-collected, with a ``ResourceWarning``.
    """

    def __init__(self, bundle: Bundle, backend, precision: str, batcher: DynamicBatcher, trunk: _TrunkSpec) -> None:
        self.bundle = bundle
        self.contract = bundle.contract
        self.precision = precision
        self.max_batch = batcher.max_batch
        self._backend = backend
        self._batcher = batcher
        self._trunk_spec: _TrunkSpec | None = trunk
        # The estimator runs beside the trunk; a remote model server's node keeps it local, on the CPU.
        local = trunk.backend in ESTIMATOR_BACKENDS
        self._estimator_spec = (
            (trunk.backend, trunk.device, trunk.options.get("threads")) if local else ("onnxruntime", "cpu", None)
        )
        self._trunk: DynamicBatcher | None = None
        self._head: FoldedHead | None = None
        self._estimator: OcclusionEstimator | None = None
        self._finder = FaceFinder(bundle, *self._estimator_spec)
        self._lock = threading.Lock()
        # Holds the batchers, never self: the worker threads must not keep a dropped Recognizer alive.
        self._batchers = [batcher]
        self._finalizer = weakref.finalize(self, _close_unclosed, self._batchers, str(bundle.path))
        self._finalizer.atexit = False  # at exit the daemon workers simply end with the process

    @classmethod
    def open(
        cls,
        bundle: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        precision: str = "auto",
        max_batch: int = 64,
        max_delay_ms: float = 2.0,
        queue_size: int | None = None,
        verify: bool = True,
        allow_ungated: bool = False,
        engine: str | None = None,
        expected_digest: str | None = None,
        **backend_options,
    ) -> Recognizer:
        """Open ``bundle`` (hashes checked unless ``verify=False``) on ``backend``/``device``.

        ``precision="auto"`` picks the fastest variant in the bundle for the device (only variants
        that passed their parity gate qualify); ``self.precision`` says which was chosen. A variant
        recorded as missing its gate (made for timing only) is refused unless ``allow_ungated``.
        The batcher runs at most ``max_batch`` faces at once, waits at most ``max_delay_ms`` (0 to
        60 000) for a batch to fill (0 for a single caller that wants no added latency) and holds at
        most ``queue_size`` faces (default 4 × ``max_batch``) before ``submit`` rejects. These, and
        ``threads`` among ``backend_options``, are checked before the bundle is read.

        ``engine``: a TensorRT engine of the bundle by manifest key or file name (default: the
        newest built for the backend and precision). ``expected_digest``: the SHA-256 of the
        bundle's manifest that must be opened (``pdsn verify`` prints it), for deployments that
        must also detect a replaced bundle whose own hashes are consistent.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        check_settings(max_batch, max_delay_ms, queue_size)
        if "threads" in backend_options:
            check_int(backend_options["threads"], "threads", 1, optional=True)
        if "engine" in backend_options:
            raise TypeError("engine is a named argument of Recognizer.open (an engine's manifest key or file name)")
        loaded = open_bundle(bundle, verify=verify, expected_digest=expected_digest)
        backend = resolve_backend(backend, device, loaded.manifest)
        engines = backend in ENGINE_BACKENDS
        if engine is not None and not engines:
            raise ValueError(f"engine={engine!r} names a TensorRT engine, but backend {backend!r} runs ONNX variants")
        if engine is not None and precision == "auto":
            precision = named_engine(loaded.manifest, engine).precision
        if precision == "auto":
            order = AUTO_ORDER.get(device, AUTO_ORDER["cpu"])
            built = {e.precision for e in loaded.manifest.engines_of(backend)}
            candidates = [
                p for p in order if p in loaded.precisions and loaded.gate_passed(p) and (not engines or p in built)
            ]
            if not candidates:
                raise ValueError(
                    f"bundle {loaded.path} has no {backend} engine of a gated variant; build one with "
                    f"`pdsn build --bundle {loaded.path} --flavour {backend}`"
                )
            precision = candidates[0]
        elif precision in loaded.precisions and not loaded.gate_passed(precision) and not allow_ungated:
            failures = loaded.manifest.variants[precision].parity.failures
            raise ValueError(
                f"the {precision} variant of {loaded.path} missed its parity gate ({'; '.join(failures)}) "
                f"and was kept for timing only; it is not for serving. Re-make it from a trained model "
                f"with `pdsn quantize`, or pass allow_ungated=True to measure it anyway."
            )
        model_path = loaded.variant_path(precision)
        if engines:
            entry = find_engine(loaded.manifest, backend, precision, engine)
            model_path = loaded.file(entry.file, f"engines.{entry.key}.file")
            backend_options = {**backend_options, "engine": entry}
            if max_batch > entry.profile.max:
                raise ValueError(
                    f"max_batch {max_batch} exceeds the engine's profile (batch {entry.profile.min}.."
                    f"{entry.profile.max}); open with max_batch <= {entry.profile.max} or "
                    f"rebuild with `pdsn build --batch MIN,OPT,MAX`"
                )
        runner = create_backend(
            backend,
            str(model_path),
            loaded.dictionary,
            loaded.contract,
            device=device,
            **backend_options,
        )
        batcher = _batcher_over(runner, max_batch, max_delay_ms, queue_size, loaded.contract.embedding_size)
        trunk_options = {k: v for k, v in backend_options.items() if k not in ("engine", "cuda_stream", "cuda_context")}
        # Engines hold the whole model; their trunk features (and the occlusion estimator) come from
        # ONNX models on ONNX Runtime.
        trunk_backend = "onnxruntime" if engines else backend
        trunk = _TrunkSpec(trunk_backend, device, trunk_options, max_batch, max_delay_ms, queue_size)
        return cls(loaded, runner, precision, batcher, trunk)

    @property
    def backend_info(self) -> dict:
        info = {**self._backend.describe(), "precision": self.precision}
        if self._estimator is not None:
            info["occlusion_estimator"] = self._estimator.describe()
        return info

    def stats(self, reset: bool = False) -> BatcherStats:
        """The batcher's counters: requests, rejections, timeouts, batch sizes, queue wait, compute.

        ``reset`` starts them again from zero after reading (e.g. once per reporting interval).
        """
        return self._batcher.stats(reset)

    def features_stats(self, reset: bool = False) -> BatcherStats | None:
        """``stats`` of the trunk's batcher (``features``, the gallery's enrollments and searches); None
        until features are first asked for."""
        with self._lock:
            trunk = self._trunk
        return None if trunk is None else trunk.stats(reset)

    @property
    def queue_size(self) -> int:
        """The most faces the batcher holds queued; a caller's request of more can never be admitted whole."""
        return self._batcher.queue_size

    def health(self) -> BatcherHealth:
        """Whether this Recognizer serves requests (e.g. for a readiness probe), and why not when it does not."""
        return self._batcher.health()

    @property
    def healthy(self) -> bool:
        return self._batcher.healthy

    def submit(self, image: object, occlusion: object = None, deadline: float | None = None) -> Future:
        """Queue faces for embedding from any thread; returns at once with a ``Future``.

        One face (H, W, C) resolves to its (512,) embedding; a batch of up to ``max_batch`` faces
        to (N, 512). ``deadline``: seconds it may wait in the queue, after which the future fails
        with ``DeadlineExceededError`` and the faces are not run. A full queue raises
        ``QueueFullError`` at once; after ``close()``, ``BatcherClosedError`` (``BatcherFailedError``
        if the batcher's worker failed: see ``health()``).
        """
        batch = prepare_images(image, self.contract)
        masks = as_vectors(self._occlusion(occlusion, batch))
        single = isinstance(image, np.ndarray) and image.ndim == 3
        return self._batcher.submit(batch, masks, deadline, single)

    def submit_faces(self, faces: Located, occlusion: Sequence[Occlusion], deadline: float | None = None) -> Future:
        """(N, E) embeddings of located faces under their occlusion (one each, as ``occlusion_of`` gives it), from
        any thread: queued in parts of at most ``max_batch``, all of them or none (``QueueFullError``)."""
        if len(occlusion) != len(faces):
            raise InputError(
                "occlusion",
                f"occlusion: {len(occlusion)} values for {len(faces)} faces; pass one per face (occlusion_of)",
            )
        return _queued(self._batcher, faces.batch, as_vectors(occlusion), deadline)

    def submit_faces_features(self, faces: Located, deadline: float | None = None) -> Future:
        """(N, F) trunk features of located faces, queued as ``submit_faces`` queues them."""
        none = np.zeros((len(faces), NUM_CELLS), dtype=np.float32)
        return _queued(self._trunk_batcher(), faces.batch, none, deadline)

    def submit_verification(
        self,
        face_a: Located,
        face_b: Located,
        occlusion_a: Occlusion,
        occlusion_b: Occlusion,
        deadline: float | None = None,
    ) -> Future:
        """A ``PairScore``: one located face per side, both masked by the union of their occlusion (PDSN)."""
        union = occlusion_a | occlusion_b
        embedded = self.submit_faces(pair_faces(face_a, face_b), (union, union), deadline)
        return then(embedded, lambda embeddings: PairScore(pair_score(embeddings[0], embeddings[1]), union))

    def embed(
        self,
        images: object,
        occlusion: object = None,
        landmarks: object = None,
        return_cells: bool = False,
        detection: DetectionSettings | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list[FaceEmbedding]:
        """Embeddings of faces: (N, 512) for aligned crops (or photos with their ``landmarks``), and one
        ``FaceEmbedding`` per face found when any image is a photo (see ``pdsn.runtime.photos``).

        ``images``: one image or a batch; an image is an array, a file path, image bytes or a PIL image.
        ``landmarks``: one (5, 2) array per image (eyes, nose, mouth corners as x, y), for callers with a
        detector of their own. ``occlusion``: as ``submit`` takes it, per image (each face of a photo takes
        its photo's cells), or ``"auto"``. ``return_cells``: with crops, also return the float32 (N, 25)
        vectors that masked each embedding (a ``FaceEmbedding`` always carries its cells).
        ``detection``: how faces are looked for in photos (default ``DetectionSettings()``). A photo in
        which no face is found raises ``FaceCountError``.
        """
        if not isinstance(return_cells, bool):
            raise TypeError(f"return_cells must be True or False, got {return_cells!r}")
        self._batcher.check_may_wait("Recognizer.embed()")
        located = self.locate(images, landmarks, detection)
        occlusions = self.occlusion_of(occlusion, located)
        embeddings = np.concatenate(
            [self.submit_faces(located.part(rows), occlusions[rows]).result() for rows in self._parts(located)]
        )
        if located.sources is not None:
            return [
                FaceEmbedding(source.image, source.face, embedding, list(cells.cells))
                for source, embedding, cells in zip(located.sources, embeddings, occlusions)
            ]
        return (embeddings, as_vectors(occlusions)) if return_cells else embeddings

    def detect(
        self,
        photo: object,
        min_face: float | None = None,
        thresholds: tuple[float, float, float] | None = None,
        scale_factor: float | None = None,
    ) -> list[DetectedFace]:
        """The faces in a photo (array, path, bytes or PIL image), highest score first: each a box, a
        score and five landmarks. ``min_face``: the smallest face side looked for, in pixels (default 20);
        ``thresholds``: the three stages' score thresholds (default 0.6, 0.7, 0.7)."""
        defaults = DetectionSettings()
        settings = DetectionSettings(
            defaults.min_face if min_face is None else min_face,
            defaults.thresholds if thresholds is None else thresholds,
            defaults.scale_factor if scale_factor is None else scale_factor,
        )
        return self._finder.detect(photo, settings)

    def locate(
        self,
        images: object,
        landmarks: object = None,
        detection: DetectionSettings | None = None,
        face: int | str | None = ALL_FACES,
        argument: str = "images",
        landmarks_argument: str = "landmarks",
    ) -> Located:
        """The aligned faces of ``images`` in the model's layout, and where each came from (``FaceFinder``).

        ``face``: ``"all"`` faces of each photo, or one per photo: None (the only one: more is an error),
        ``"largest"``, or an index in the order ``detect`` lists them.
        """
        if face != ALL_FACES:
            face = check_face_choice(face)
        if detection is not None and not isinstance(detection, DetectionSettings):
            raise TypeError(f"detection: expected DetectionSettings, got {type(detection).__name__}")
        return self._finder.locate(images, landmarks, detection, face, argument, landmarks_argument=landmarks_argument)

    def occlusion_of(self, occlusion: object, located: Located, argument: str = "occlusion") -> tuple[Occlusion, ...]:
        """One ``Occlusion`` per face of ``located``: the estimator's for ``"auto"``, else per image as given."""
        if isinstance(occlusion, str) and occlusion == AUTO:
            return self._occlusion(AUTO, located.batch, argument)
        return located.per_face(prepare_occlusion(occlusion, located.images, argument))

    @property
    def folded_head(self) -> FoldedHead:
        """The head after the mask as one linear map (``W'``, ``b'``), from the bundle's head file."""
        with self._lock:
            if self._head is None:
                head_file = self.bundle.manifest.head_file
                if head_file is None:
                    raise ValueError(
                        f"bundle {self.bundle.path} has no folded head (exported by an older pdsn-deploy); "
                        f"re-export it with `pdsn export` to use trunk features and galleries"
                    )
                head = FoldedHead.load(self.bundle.file(head_file, "head.file"))
                expected = (self.contract.embedding_size, int(np.prod(self.contract.feature_shape)))
                if head.weight.shape != expected:
                    raise ValueError(
                        f"bundle {self.bundle.path}: the folded head is {head.weight.shape}, the contract says "
                        f"{expected}; re-export the bundle"
                    )
                self._head = head
            return self._head

    def features(self, images: object, landmarks: object = None) -> np.ndarray:
        """The trunk's flat features (N, C·H·W) of aligned crops (or photos with ``landmarks``), float32.

        The feature map before the mask: with ``folded_head`` it gives the embedding under any
        occlusion pattern, which is how a gallery applies each probe's pattern to stored faces.
        """
        self._trunk_batcher().check_may_wait("Recognizer.features()")
        located = self.locate(images, landmarks)
        return np.concatenate(
            [self.submit_faces_features(located.part(rows)).result() for rows in self._parts(located)]
        )

    def submit_features(self, image: object, deadline: float | None = None) -> Future:
        """``features`` from any thread without waiting, as ``submit`` is to ``embed``."""
        batch = prepare_images(image, self.contract)
        single = isinstance(image, np.ndarray) and image.ndim == 3
        none = np.zeros((len(batch), NUM_CELLS), dtype=np.float32)
        return self._trunk_batcher().submit(batch, none, deadline, single)

    def estimate_occlusion(self, images: object, landmarks: object = None) -> np.ndarray:
        """The occluded cells the bundle's estimator finds: float32 (N, 25) 0/1 vectors.

        This is what ``occlusion="auto"`` uses wherever occlusion is accepted.
        """
        return as_vectors(self._occlusion(AUTO, self.locate(images, landmarks).batch))

    def direct_call(self, images: object, occlusion: object = None):
        """The engine's own call on these inputs, prepared once (for measuring the runtime's overhead)."""
        if self._batcher.closed:
            raise RuntimeError("this Recognizer was closed")
        batch = prepare_images(images, self.contract)
        return self._backend.direct_call(batch, as_vectors(prepare_occlusion(occlusion, len(batch))))

    def verify(
        self,
        image_a: object,
        image_b: object,
        occlusion_a: object = None,
        occlusion_b: object = None,
        threshold: float | None = None,
        face_a: int | str | None = LARGEST,
        face_b: int | str | None = LARGEST,
        detection: DetectionSettings | None = None,
    ) -> Verification:
        """Cosine score of two faces; the union of both faces' occluded cells masks both (PDSN).

        Each image is an aligned crop or a photo; of a photo, ``face_a`` / ``face_b`` is compared: the
        largest face by default, None for the only one, or an index as ``detect`` lists them.
        ``threshold``: the score at or above which ``match`` is True (None: ``match`` stays None).
        """
        check_real(threshold, "threshold", -1.0, 1.0, optional=True)
        self._batcher.check_may_wait("Recognizer.verify()")
        sides = [
            self.locate(image, None, detection, face, name)
            for image, face, name in ((image_a, face_a, "image_a"), (image_b, face_b, "image_b"))
        ]
        (occlusion_a,) = self.occlusion_of(occlusion_a, sides[0], "occlusion_a")
        (occlusion_b,) = self.occlusion_of(occlusion_b, sides[1], "occlusion_b")
        scored: PairScore = self.submit_verification(sides[0], sides[1], occlusion_a, occlusion_b).result()
        found = [None if side.sources is None else side.sources[0].face for side in sides]
        match = None if threshold is None else scored.score >= threshold
        return Verification(scored.score, list(scored.occlusion.cells), match, *found)

    def close(self) -> None:
        """Run every accepted request, then release the backend. Later calls raise ``BatcherClosedError``.

        From a done-callback (on the batcher's worker thread) it returns at once; the worker then
        drains and releases the backend itself.
        """
        self._finalizer.detach()
        with self._lock:
            trunk, self._trunk_spec = self._trunk, None
        if trunk is not None:
            trunk.close()
        self._batcher.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _occlusion(self, occlusion: object, batch: np.ndarray, argument: str = "occlusion") -> tuple[Occlusion, ...]:
        """``prepare_occlusion``, or for ``"auto"`` the estimator's cells of the prepared ``batch``."""
        if not (isinstance(occlusion, str) and occlusion == AUTO):
            return prepare_occlusion(occlusion, len(batch), argument)
        with self._lock:
            if self._estimator is None:
                self._estimator = OcclusionEstimator(self.bundle, *self._estimator_spec)
            estimator = self._estimator
        return from_checked_vectors(estimator.cells(batch))

    def _parts(self, faces: Located) -> list[slice]:
        """A blocking call's faces in parts of ``max_batch``, run one after the other: a call of more faces
        than the queue holds still runs, a part at a time."""
        return [slice(start, start + self.max_batch) for start in range(0, len(faces), self.max_batch)]

    def _trunk_batcher(self) -> DynamicBatcher:
        """The trunk's backend and batcher, made on first use (a second model session)."""
        with self._lock:
            if self._trunk is None:
                spec = self._trunk_spec
                if spec is None or self._batcher.closed:
                    raise BatcherClosedError("this Recognizer was closed; open a new one")
                trunk_file = self.bundle.manifest.variants[self.precision].trunk_file
                if trunk_file is None:
                    raise ValueError(
                        f"bundle {self.bundle.path} has no trunk model for {self.precision} (made by an older "
                        f"pdsn-deploy); re-export it with `pdsn export` and re-make its variants"
                    )
                path = self.bundle.file(trunk_file, f"variants.{self.precision}.trunk.file")
                runner = create_backend(
                    spec.backend,
                    str(path),
                    self.bundle.dictionary,
                    self.contract,
                    device=spec.device,
                    role="features",
                    **spec.options,
                )
                size = int(np.prod(self.contract.feature_shape))
                self._trunk = _batcher_over(runner, spec.max_batch, spec.max_delay_ms, spec.queue_size, size)
                self._batchers.append(self._trunk)
            return self._trunk


@dataclass(frozen=True)
class _TrunkSpec:
    """How to open the trunk's backend when features are first asked for."""

    backend: str
    device: str
    options: dict
    max_batch: int
    max_delay_ms: float
    queue_size: int | None


def _batcher_over(runner, max_batch: int, max_delay_ms: float, queue_size: int | None, width: int) -> DynamicBatcher:
    return DynamicBatcher(
        runner.start if runner.pipelined else runner.infer,
        max_batch,
        max_delay_ms,
        queue_size,
        runner.preferred_batch_sizes,
        pipelined=runner.pipelined,
        embedding_size=width,
        on_stop=runner.close,
    )


def _queued(batcher: DynamicBatcher, batch: np.ndarray, masks: np.ndarray, deadline: float | None) -> Future:
    """``batch`` in parts of at most the batcher's ``max_batch``, admitted whole, as one future."""
    batcher.check_room(len(batch))
    parts: list[Future] = []
    try:
        for start in range(0, len(batch), batcher.max_batch):
            part = slice(start, start + batcher.max_batch)
            parts.append(batcher.submit(batch[part], masks[part], deadline))
    except BaseException:
        for future in parts:
            future.cancel()
        raise
    return joined(parts)


def _close_unclosed(batchers: list[DynamicBatcher], bundle: str) -> None:
    warnings.warn(
        f"a Recognizer for {bundle} was garbage-collected without close(); its worker thread and backend "
        f"are released now. Call close() or use `with Recognizer.open(...) as recognizer:`",
        ResourceWarning,
        stacklevel=2,
    )
    for batcher in batchers:
        batcher.stop()
