"""``pdsn bench``: every backend x precision x batch size of a bundle, side by side in one run.

The baseline is the reference code's way of running the model: PyTorch eager FP32. How latency
is defined is LATENCY_DEFINITION, which every report carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdsn.bench.machine import describe_machine
from pdsn.bench.timing import LatencyStats, measure, measure_interleaved

REFERENCE = "pytorch-eager-fp32"
LATENCY_DEFINITION = (
    "Latency is the wall time of one synchronous call that turns a batch of uint8 aligned crops "
    "(plus occlusion) into embeddings, measured with time.perf_counter after warm-up, over a window "
    "of at least `seconds` and `min_iterations` calls; throughput is batch / median latency. Each "
    "runtime configuration is measured end to end through Recognizer.embed (input checks, "
    "occlusion handling, binding) and as a direct call of the same engine object with the same "
    "prepared inputs, the two calls alternating so that machine drift falls on both alike; their "
    "difference is the runtime's own overhead."
)
# A configuration whose p90 exceeds its median by more than this is flagged as noisy.
NOISY_SPREAD = 0.25


@dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1, 8, 32)
    reference: bool = True
    seconds: float = 3.0
    min_iterations: int = 5
    warmup: int = 2


def run_benchmark(bundle: Path, config: BenchConfig, progress: bool = True) -> dict:
    from pdsn.runtime import Recognizer
    from pdsn.runtime.backends import BackendUnavailableError
    from pdsn.runtime.bundle import open_bundle

    loaded = open_bundle(bundle)
    faces, occlusion = _inputs(max(config.batches))
    rows, skipped = [], {}
    if config.reference:
        reference = _pytorch_reference(loaded)
        if isinstance(reference, str):
            skipped[REFERENCE] = reference
        else:
            for batch in config.batches:
                stats = _measure(lambda: reference(faces[:batch], occlusion[:batch]), batch, config)
                rows.append(_row(REFERENCE, "pytorch", "fp32", stats, None))
                _say(progress, rows[-1])
    for backend in config.backends:
        for precision in config.precisions:
            if precision not in loaded.precisions:
                skipped[f"{backend}-{precision}"] = f"the bundle has no {precision} variant"
                continue
            try:
                recognizer = Recognizer.open(bundle, backend=backend, precision=precision,
                                             max_batch=max(config.batches), allow_ungated=True)
            except BackendUnavailableError as exc:
                skipped[f"{backend}-{precision}"] = str(exc)
                continue
            with recognizer:
                for batch in config.batches:
                    images, masks = faces[:batch], occlusion[:batch]
                    end_to_end, direct = measure_interleaved(
                        [lambda: recognizer.embed(images, masks), recognizer.direct_call(images, masks)],
                        batch, config.warmup, config.min_iterations, config.seconds,
                    )
                    rows.append(_row(f"{backend}-{precision}", backend, precision, end_to_end, direct))
                    rows[-1]["gate_passed"] = loaded.gate_passed(precision)
                    _say(progress, rows[-1])
    _add_ratios(rows)
    return {
        "bundle": str(bundle),
        "model": loaded.manifest["model"]["architecture"]["name"],
        "weights": loaded.manifest["model"]["weights"],
        "variants": {p: v.get("parity", {}) for p, v in loaded.manifest["variants"].items()},
        "machine": describe_machine(("pdsn-deploy", "numpy", "onnxruntime", "openvino", "torch")),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        "latency_definition": LATENCY_DEFINITION,
        "rows": rows,
        "skipped": skipped,
    }


def _inputs(count: int) -> tuple[np.ndarray, np.ndarray]:
    from pdsn.model.sample_faces import occlusion_mix, seeded_faces

    return seeded_faces(count, seed=4242), occlusion_mix(count, seed=4242)


def _measure(call, batch: int, config: BenchConfig) -> LatencyStats:
    return measure(call, batch=batch, warmup=config.warmup, min_iterations=config.min_iterations,
                   min_seconds=config.seconds)


def _row(path: str, engine: str, precision: str, stats: LatencyStats, direct: LatencyStats | None) -> dict:
    row = {"path": path, "engine": engine, "precision": precision, **stats.to_dict(),
           "noisy": stats.p90_ms > stats.p50_ms * (1 + NOISY_SPREAD)}
    if direct is not None:
        row["direct"] = direct.to_dict()
        row["overhead_pct"] = 100.0 * (stats.p50_ms - direct.p50_ms) / direct.p50_ms
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
    from pdsn.model.network import Architecture, normalize_faces

    manifest = bundle.manifest
    architecture = Architecture.from_dict(manifest["model"]["architecture"])
    if manifest["model"]["weights"] == "demo":
        from pdsn.model.demo_weights import demo_model

        model = demo_model(architecture, seed=manifest["provenance"]["seed"])
    else:
        checkpoint = Path(manifest["model"]["checkpoint"]["path"])
        if not checkpoint.is_file():
            return f"the source checkpoint {checkpoint} is not on this machine"
        from pdsn.model.checkpoint import load_recognition_model

        model, _ = load_recognition_model(checkpoint, architecture)
    dictionary = MaskDictionary(bundle.dictionary, None, None, "bundle")

    def run(faces: np.ndarray, occlusion: np.ndarray):
        with torch.no_grad():
            return model(normalize_faces(faces), torch.from_numpy(dictionary.combine(occlusion)))

    return run


def _say(enabled: bool, row: dict) -> None:
    if enabled:
        print(f"  {row['path']:<22} batch {row['batch']:>3}: {row['throughput_img_s']:8.1f} img/s, "
              f"p50 {row['p50_ms']:8.1f} ms", flush=True)
