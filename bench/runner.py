"""``pdsn bench``: every backend x precision x batch size of a bundle, side by side in one run.

The baseline is the reference code's way of running the model: PyTorch eager FP32. How latency
is defined is LATENCY_DEFINITION, which every report carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdsn.bench.concurrency import SweepConfig, sweep
from pdsn.bench.machine import describe_machine
from pdsn.bench.timing import NOISY_WINDOW_PCT, LatencyStats, measure, measure_interleaved
from pdsn.model.crop_alignment import DLIB_CHIP_150

REFERENCE = "pytorch-eager-fp32"
# dlib's own network on its own runtime, for a bundle of dlib's face ResNet (where dlib is installed).
DLIB_PEER = "dlib-compute_face_descriptor"
GOAL_VS_DLIB = 5.0
LATENCY_DEFINITION = (
    "Latency is the wall time of one synchronous call that turns a batch of uint8 aligned crops "
    "(plus occlusion) into embeddings, measured with time.perf_counter after warm-up, over a window "
    "of at least `seconds` and `min_iterations` calls; throughput is batch / median latency. Each "
    "runtime configuration is measured end to end through Recognizer.embed (input checks, "
    "occlusion handling, binding) and as a direct call of the same engine object with the same "
    "prepared inputs, the two calls alternating so that machine drift falls on both alike; their "
    "difference is the runtime's own overhead. The split shows preprocessing (input checks and "
    "occlusion handling, timed alone), the batcher's queue wait and the engine's compute (means). "
    "In the concurrency sweep, closed-loop client threads each submit one face through the "
    "dynamic batcher and wait for it; latency is submit to result on the client, throughput is "
    "requests answered inside the window per second, and overhead is mean latency minus the "
    "mean compute time of the batches those requests ran in."
)
# Flagged as noisy: p90 more than this above the median, or window thirds that differ by more
# than NOISY_WINDOW_PCT (the run-to-run variation to expect).
NOISY_SPREAD = 0.25
# Goals of the batcher (issue 5), checked when the run has what they compare.
GOAL_CLIENTS = 8
GOAL_THROUGHPUT_RATIO = 0.9
GOAL_OVERHEAD_MS = 0.5


@dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1, 8, 32)
    reference: bool = True
    seconds: float = 3.0
    min_iterations: int = 5
    warmup: int = 2
    sweep: SweepConfig | None = None


def run_benchmark(bundle: Path, config: BenchConfig, progress: bool = True) -> dict:
    from pdsn.runtime import Recognizer
    from pdsn.runtime.backends import BackendUnavailableError
    from pdsn.runtime.bundle import open_bundle

    loaded = open_bundle(bundle)
    faces, occlusion = _inputs(max(config.batches), (loaded.contract.height, loaded.contract.width))
    rows, sweeps, skipped = [], [], {}
    if config.reference:
        peers = [(REFERENCE, "pytorch", _pytorch_reference(loaded))]
        if loaded.contract.alignment == DLIB_CHIP_150:
            peers.append((DLIB_PEER, "dlib", _dlib_peer()))
        for path, engine, peer in peers:
            if isinstance(peer, str):
                skipped[path] = peer
                continue
            for batch in config.batches:
                stats = _measure(lambda b=batch, run=peer: run(faces[:b], occlusion[:b]), batch, config)
                rows.append(_row(path, engine, "fp32", stats, None))
                _say(progress, rows[-1])
    for backend in config.backends:
        for precision in config.precisions:
            if precision not in loaded.precisions:
                skipped[f"{backend}-{precision}"] = f"the bundle has no {precision} variant"
                continue
            try:
                recognizer = Recognizer.open(
                    bundle,
                    backend=backend,
                    precision=precision,
                    max_delay_ms=0.0,
                    max_batch=max(config.batches),
                    allow_ungated=True,
                )
            except BackendUnavailableError as exc:
                skipped[f"{backend}-{precision}"] = str(exc)
                continue
            with recognizer:
                for batch in config.batches:
                    rows.append(_measure_runtime(recognizer, faces[:batch], occlusion[:batch], config))
                    rows[-1]["gate_passed"] = loaded.gate_passed(precision)
                    _say(progress, rows[-1])
            if config.sweep is not None:
                sweeps += sweep(bundle, backend, precision, config.sweep, faces, occlusion, progress)
    _add_ratios(rows)
    return {
        "bundle": str(bundle),
        "model": loaded.manifest.model.name,
        "weights": loaded.manifest.model.weights,
        "variants": {p: dict(v.parity.record) for p, v in loaded.manifest.variants.items()},
        "machine": describe_machine(("pdsn-deploy", "numpy", "onnxruntime", "openvino", "torch")),
        "config": asdict(config),
        "latency_definition": LATENCY_DEFINITION,
        "rows": rows,
        "concurrency": sweeps,
        "goals": batcher_goals(rows, sweeps) + dlib_goals(rows),
        "skipped": skipped,
    }


def _measure_runtime(recognizer, images: np.ndarray, masks: np.ndarray, config: BenchConfig) -> dict:
    """End to end through the runtime against a direct engine call, plus where the time went."""
    from pdsn.runtime.inputs import prepare_images, prepare_occlusion

    batch = len(images)
    runs = [lambda: recognizer.embed(images, masks), recognizer.direct_call(images, masks)]
    for _ in range(config.warmup):  # outside the batcher's counters, so its split covers the timed calls only
        for run in runs:
            run()
    recognizer.stats(reset=True)
    end_to_end, direct = measure_interleaved(runs, batch, 0, config.min_iterations, config.seconds)
    batcher = recognizer.stats(reset=True)
    preprocess = measure(
        lambda: (prepare_images(images, recognizer.contract), prepare_occlusion(masks, batch)), batch, min_seconds=0.2
    )
    row = _row(
        f"{recognizer.backend_info['backend']}-{recognizer.precision}",
        recognizer.backend_info["backend"],
        recognizer.precision,
        end_to_end,
        direct,
    )
    row["split_ms"] = {
        "preprocess": preprocess.p50_ms,
        "queue": batcher.queue_wait_ms["mean"],
        "compute": batcher.compute_ms["mean"],
    }
    return row


def batcher_goals(rows: list[dict], sweeps: list[dict]) -> list[dict]:
    """The batcher's goals for every path that has both the direct rows and the sweep rows they need.

    Throughput with GOAL_CLIENTS single-face clients >= GOAL_THROUGHPUT_RATIO x the direct batch of
    that size, with p99 <= max_delay_ms + 2 x that batch's compute time; and the runtime's own
    overhead per request at concurrency 1 <= GOAL_OVERHEAD_MS.
    """
    goals = []
    direct = {(r["path"], r["batch"]): r for r in rows if "direct" in r}
    for row in sweeps:
        key = (row["path"], row["clients"])
        if row["clients"] == GOAL_CLIENTS and key in direct:
            base = direct[key]["direct"]
            bound = row["max_delay_ms"] + 2 * base["p50_ms"]
            ratio = row["throughput_img_s"] / base["throughput_img_s"]
            goals.append(
                {
                    "goal": f"{GOAL_CLIENTS} clients vs direct batch {GOAL_CLIENTS}",
                    "path": row["path"],
                    "max_delay_ms": row["max_delay_ms"],
                    "throughput_ratio": ratio,
                    "p99_ms": row["p99_ms"],
                    "p99_bound_ms": bound,
                    "met": ratio >= GOAL_THROUGHPUT_RATIO and row["p99_ms"] <= bound,
                }
            )
        if row["clients"] == 1 and row["max_delay_ms"] == 0:
            goals.append(
                {
                    "goal": "overhead per request at concurrency 1",
                    "path": row["path"],
                    "max_delay_ms": 0.0,
                    "overhead_ms": row["overhead_ms"],
                    "bound_ms": GOAL_OVERHEAD_MS,
                    "met": row["overhead_ms"] <= GOAL_OVERHEAD_MS,
                }
            )
    return goals


def dlib_goals(rows: list[dict]) -> list[dict]:
    """Per batch size: the runtime's fastest path >= GOAL_VS_DLIB x dlib's own descriptor computation."""
    goals = []
    for row in (r for r in rows if r["path"] == DLIB_PEER):
        ours = [r for r in rows if r["batch"] == row["batch"] and "direct" in r]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["throughput_img_s"])
        ratio = best["throughput_img_s"] / row["throughput_img_s"]
        goals.append(
            {
                "goal": f"fastest runtime path vs dlib at batch {row['batch']}",
                "path": best["path"],
                "ratio": ratio,
                "bound": GOAL_VS_DLIB,
                "met": ratio >= GOAL_VS_DLIB,
            }
        )
    return goals


def _inputs(count: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from pdsn.model.sample_faces import occlusion_mix, seeded_faces

    return seeded_faces(count, seed=4242, size=size), occlusion_mix(count, seed=4242)


def _dlib_peer():
    """dlib's ``compute_face_descriptor`` on a batch of chips (its list overload), or why it cannot run here."""
    try:
        from pdsn.bench.dlib_peer import dlib_descriptors
    except ImportError as exc:
        return str(exc)
    try:
        dlib_descriptors(_inputs(1, (150, 150))[0])
    except ImportError as exc:
        return str(exc)
    return lambda faces, occlusion: dlib_descriptors(faces)


def _measure(call, batch: int, config: BenchConfig) -> LatencyStats:
    return measure(
        call, batch=batch, warmup=config.warmup, min_iterations=config.min_iterations, min_seconds=config.seconds
    )


def _row(path: str, engine: str, precision: str, stats: LatencyStats, direct: LatencyStats | None) -> dict:
    row = {
        "path": path,
        "engine": engine,
        "precision": precision,
        **stats.to_dict(),
        "noisy": stats.p90_ms > stats.p50_ms * (1 + NOISY_SPREAD) or stats.window_spread_pct > NOISY_WINDOW_PCT,
    }
    if direct is not None:
        row["direct"] = direct.to_dict()
        row["overhead_ms"] = stats.p50_ms - direct.p50_ms
        row["overhead_pct"] = 100.0 * row["overhead_ms"] / direct.p50_ms
    return row


def _add_ratios(rows: list[dict]) -> None:
    baseline = {r["batch"]: r["throughput_img_s"] for r in rows if r["path"] == REFERENCE}
    for row in rows:
        if row["batch"] in baseline:
            row["vs_reference"] = row["throughput_img_s"] / baseline[row["batch"]]


def _pytorch_reference(bundle):
    """The PyTorch model behind the bundle, or a reason why it cannot be rebuilt here."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'pdsn-deploy[export]')"
    from pdsn.model.dictionary import MaskDictionary

    model_record = bundle.manifest.model
    weights = model_record.weights
    if weights == "seeded":
        from pdsn.model.demo_weights import seeded_model
        from pdsn.model.network import Architecture

        if model_record.seed is None:
            return "the bundle records no seed for its seeded weights"
        model = seeded_model(Architecture.from_dict(dict(model_record.architecture)), seed=model_record.seed)
    else:
        from pdsn.model.demo_weights import TRAINED_DEMO_CHECKPOINT

        # The demo model ships with the package, wherever the bundle was exported.
        if weights == "trained-demo":
            checkpoint = TRAINED_DEMO_CHECKPOINT
        elif model_record.checkpoint_path is None:
            return "the bundle records no source checkpoint"
        else:
            checkpoint = Path(model_record.checkpoint_path)
        if not checkpoint.is_file():
            return f"the source checkpoint {checkpoint} is not on this machine"
        from pdsn.model.checkpoint import load_recognition_model

        model, _ = load_recognition_model(checkpoint)
    dictionary = MaskDictionary(bundle.dictionary, None, None, "bundle")

    def run(faces: np.ndarray, occlusion: np.ndarray):
        with torch.no_grad():
            return model(model.normalise(faces), torch.from_numpy(dictionary.combine(occlusion)))

    return run


def _say(enabled: bool, row: dict) -> None:
    if enabled:
        print(
            f"  {row['path']:<22} batch {row['batch']:>3}: {row['throughput_img_s']:8.1f} img/s, "
            f"p50 {row['p50_ms']:8.1f} ms",
            flush=True,
        )
