"""``pdsn gpu-check``: PyTorch and the fused FDM kernel on one GPU, side by side in one run.

Measured on LResNet50E-IR with seeded weights (speed does not depend on the weights):

- PyTorch eager FP32, the baseline of every ratio; eager FP16 (``model.half()``: weights and
  activations in FP16, as an FP16 engine runs them, not autocast's mixed precision); and
  ``torch.compile`` of the FP16 model (one static-shape compile per batch size).
- The FDM step alone on the [N, C, 7, 6] feature map, FP32 and FP16: the fused kernel
  (``kernels/fdm_kernel.cu`` through NVRTC and cuda-python, as the runtime launches it) against the
  exported graph's inlined body ``features * relu(1 - occlusion @ (1 - D))`` in PyTorch. Both
  outputs must equal the numpy reference exactly.

Exit status: 0 when every mandatory path ran and every equality held, 1 otherwise, 2 when
``--device cuda`` finds no GPU. torch.compile is optional: its failure, or its compile budget
running out, is recorded as its status in the results and leaves the exit status alone, since a
compiler problem says nothing about the paths the package deploys. ``--device cpu --smoke`` runs
the same logic on the tiny architecture in seconds (the kernel is then reported as skipped).

``--check-test-report JUNIT_XML`` instead judges a junit report of ``pytest -m gpu``
(scripts/gpu-check.sh): on a GPU machine a skipped GPU test means the check did not happen.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib
import math
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from pdsn.bench.machine import cpu_model
from pdsn.bench.report import save_report
from pdsn.bench.timing import LatencyStats, measure_interleaved
from pdsn.errors import PdsnError
from pdsn.kernels.fdm_pack import pack_dictionary, pack_occlusion
from pdsn.kernels.fdm_reference import fdm_gather_mul
from pdsn.model.demo_weights import SEEDED_WEIGHTS_LABEL, seeded_dictionary, seeded_model
from pdsn.model.network import LRESNET50E_IR, LRESNET_IR_TINY, architecture_by_name, normalize_faces
from pdsn.model.sample_faces import occlusion_mix, seeded_faces

BASELINE = "pytorch-eager-fp32"
COMPILED = "pytorch-compile-fp16"
DTYPES = {"fp32": "float32", "fp16": "float16"}
EAGER_PATHS = [f"pytorch-eager-{p}" for p in DTYPES]
KERNEL_PATHS = [f"fdm-kernel-{p}" for p in DTYPES]
FDM_PATHS = [f"fdm-inlined-{p}" for p in DTYPES] + KERNEL_PATHS
LATENCY_DEFINITION = (
    "Model rows: wall time of one call on a batch already on the device, torch.cuda.synchronize() "
    "included, after warm-up, over a window of at least `seconds`; eager FP32 and FP16 alternate in "
    "one window so that drift falls on both. FDM rows: the inlined body and the kernel alternate "
    "likewise; on a GPU each sample replays a CUDA graph of `fdm_calls_per_sample` back-to-back "
    "calls (as the runtime replays its captured graphs, so Python launch cost is left out) and is "
    "divided by that count. The kernel takes the occlusion already packed into words. Throughput "
    "is batch / median latency; ratios are throughput over the baseline's at the same batch."
)
SEED = 4242
# GPU tests that need nothing but a GPU and cuda-python: they must run, not skip. Other gpu tests
# (TensorRT's) skip where their library is missing.
REQUIRED_GPU_TESTS = ("tests/test_fdm_kernel.py", "tests/test_cuda_memory.py")


class NoGpuError(PdsnError, RuntimeError):
    """``--device cuda`` was asked for, but torch sees no CUDA GPU."""


@dataclass(frozen=True)
class CheckConfig:
    """What to measure, and how long; ``SMOKE`` overrides it for a quick run of the logic."""

    device: str = "cuda"
    architecture: str = LRESNET50E_IR.name
    batches: tuple[int, ...] = (1, 8, 64, 256)
    seconds: float = 1.0
    min_iterations: int = 5
    warmup: int = 3
    fdm_calls_per_sample: int = 100
    compile_backend: str = "inductor"
    # After the first batch size, no new compile starts once torch.compile has taken this long.
    compile_budget_s: float = 120.0
    smoke: bool = False


SMOKE = {
    "architecture": LRESNET_IR_TINY.name,
    "batches": (1, 2),
    "seconds": 0.05,
    "min_iterations": 3,
    "warmup": 1,
    "fdm_calls_per_sample": 2,
    "compile_backend": "eager",
    "compile_budget_s": 0.0,
    "smoke": True,
}


class GpuCheck:
    """One run: the models and inputs on the device, and the result that each part fills in."""

    def __init__(self, config: CheckConfig) -> None:
        import torch

        self.torch = torch
        self.config = config
        if config.device == "cuda" and not torch.cuda.is_available():
            raise NoGpuError(
                f"no CUDA GPU is visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
                f"run on a machine with an NVIDIA GPU, or use --device cpu --smoke to check this script's logic"
            )
        self.device = torch.device(config.device)
        architecture = architecture_by_name(config.architecture)
        model = seeded_model(architecture)
        self.models = {"fp32": model.to(self.device), "fp16": copy.deepcopy(model).half().to(self.device)}
        faces = normalize_faces(seeded_faces(max(config.batches), seed=SEED)).to(self.device)
        self.faces = {"fp32": faces, "fp16": faces.half()}
        self.feature_shape = architecture.feature_shape
        self.dictionary = seeded_dictionary(architecture).masks
        self.occlusion = occlusion_mix(max(config.batches), seed=SEED)
        self.packed_dictionary = pack_dictionary(self.dictionary)
        self.result: dict[str, Any] = {
            "title": f"GPU check: {self.device_name()}",
            "device": self.describe_device(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": self.versions(),
            "model": {"architecture": architecture.name, "weights": SEEDED_WEIGHTS_LABEL},
            "fdm_feature_shape": list(self.feature_shape),
            "config": asdict(config),
            "latency_definition": LATENCY_DEFINITION,
            "rows": [],
            "status": {},
        }

    def run(self, out: Path) -> dict:
        """Every part in turn, the mandatory ones first; the results are written after each."""
        written = []
        for part, paths in ((self.eager, EAGER_PATHS), (self.fdm, FDM_PATHS), (self.compiled, [COMPILED])):
            try:
                part()
            except Exception as error:  # keep the other parts' measurements; the traceback goes to the log
                self.record_failure(paths, error)
            written = write_results(finish(self.result), out)
        print(f"wrote {', '.join(str(p) for p in written)}")
        return self.result

    def record_failure(self, paths: list[str], error: Exception) -> None:
        """Mark the ``paths`` that have no status yet as failed with ``error``."""
        traceback.print_exc()
        for path in paths:
            self.result["status"].setdefault(path, f"failed: {_reason(error)}")

    def eager(self) -> None:
        config = self.config
        with self.torch.inference_mode():
            for batch in config.batches:
                calls = [self.model_call(self.models[p], self.faces[p][:batch]) for p in DTYPES]
                stats = measure_interleaved(calls, batch, config.warmup, config.min_iterations, config.seconds)
                for precision, measured in zip(DTYPES, stats):
                    self.add_row(f"pytorch-eager-{precision}", "model", precision, measured)
        for path in EAGER_PATHS:
            self.result["status"][path] = "ok"

    def fdm(self) -> None:
        kernel = None
        if self.device.type != "cuda":
            self.result["status"].update(dict.fromkeys(KERNEL_PATHS, "skipped: no GPU"))
        else:
            try:
                kernel = self.kernel()
            except Exception as error:  # NVRTC or the driver refused: still time the inlined body
                self.record_failure(KERNEL_PATHS, error)
        generator = self.torch.Generator().manual_seed(SEED)
        with self.torch.inference_mode():
            for precision, dtype in DTYPES.items():
                mismatches: dict[str, list[str]] = {}
                for batch in self.config.batches:
                    features = self.torch.randn((batch, *self.feature_shape), generator=generator)
                    features = features.to(self.device, getattr(self.torch, dtype))
                    equal = self.fdm_batch(kernel, precision, features)
                    for path, ok in equal.items():
                        mismatches.setdefault(path, []).extend([] if ok else [str(batch)])
                for path, batches in mismatches.items():
                    self.result["status"][path] = (
                        f"failed: differs from the numpy reference at batch {', '.join(batches)}" if batches else "ok"
                    )

    def fdm_batch(self, kernel: Any, precision: str, features: Any) -> dict[str, bool]:
        """Time the inlined body and the kernel on one batch; return whether each equals the reference."""
        batch = features.shape[0]
        occlusion = self.occlusion[:batch]
        expected = fdm_gather_mul(features.cpu().numpy(), occlusion, self.dictionary)
        occlusion_t = self.torch.from_numpy(occlusion).to(self.device, features.dtype)
        dictionary_t = self.torch.from_numpy(np.array(self.dictionary)).to(self.device, features.dtype)
        calls = {f"fdm-inlined-{precision}": lambda: inlined_fdm(features, occlusion_t, dictionary_t)}
        outputs = {f"fdm-inlined-{precision}": calls[f"fdm-inlined-{precision}"]()}
        if kernel is not None:
            out = self.torch.empty_like(features)
            calls[f"fdm-kernel-{precision}"] = self.kernel_call(kernel, precision, features, occlusion, out)
            calls[f"fdm-kernel-{precision}"]()
            outputs[f"fdm-kernel-{precision}"] = out
        self.synchronize()
        equal = {path: bool(np.array_equal(value.cpu().numpy(), expected)) for path, value in outputs.items()}
        repeats = self.config.fdm_calls_per_sample
        config = self.config
        stats = measure_interleaved(
            [self.repeated(call, repeats) for call in calls.values()],
            batch,
            config.warmup,
            config.min_iterations,
            config.seconds,
        )
        for path, measured in zip(calls, stats):
            self.add_row(path, "fdm", precision, _per_call(measured, repeats), equals_reference=equal[path])
        return equal

    def compiled(self) -> None:
        """torch.compile of the FP16 model, one static-shape compile per batch: the first always, then within budget."""
        config, torch = self.config, self.torch
        status = self.result["status"]
        start = time.perf_counter()
        try:
            model = torch.compile(self.models["fp16"], backend=config.compile_backend, dynamic=False)
        except Exception as error:  # an unknown backend or a torch without a working compiler
            status[COMPILED] = f"failed: {_reason(error)}"
            return
        with torch.inference_mode():
            for index, batch in enumerate(config.batches):
                if index and time.perf_counter() - start > config.compile_budget_s:
                    status[COMPILED] = (
                        f"partial: the compile budget of {config.compile_budget_s:g} s ran out before batch {batch}"
                    )
                    return
                faces = self.faces["fp16"][:batch]
                call = self.model_call(model, faces)
                begun = time.perf_counter()
                try:
                    call()
                except Exception as error:  # dynamo and inductor raise many types; record, do not stop the run
                    traceback.print_exc()
                    status[COMPILED] = f"failed at batch {batch}: {_reason(error)}"
                    return
                compile_s = time.perf_counter() - begun
                (measured,) = measure_interleaved([call], batch, config.warmup, config.min_iterations, config.seconds)
                self.add_row(COMPILED, "model", "fp16", measured, compile_s=compile_s)
        status[COMPILED] = "ok"

    def kernel(self) -> Any:
        """The fused kernel, loaded into torch's CUDA context."""
        from pdsn.kernels.fdm_nvrtc import FdmKernel

        index = self.device.index or 0
        _bind_primary_context(index)
        major, minor = self.torch.cuda.get_device_capability(index)
        return FdmKernel(f"{major}.{minor}")

    def kernel_call(
        self, kernel: Any, precision: str, features: Any, occlusion: np.ndarray, out: Any
    ) -> Callable[[], None]:
        """Launch the kernel on torch's current stream (the capture stream, inside a graph capture).

        Off a GPU ``kernel`` is a stand-in with the same ``launch`` (the tests' host-compiled kernel).
        """
        packed = self.packed_dictionary
        words = self.torch.from_numpy(pack_occlusion(occlusion).view(np.int32)).to(self.device)
        dictionary = self.torch.from_numpy(packed.view(np.int32)).to(self.device)
        batch, elements = features.shape[0], features[0].numel()

        def launch() -> None:
            stream = self.torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
            kernel.launch(
                DTYPES[precision],
                features.data_ptr(),
                words.data_ptr(),
                dictionary.data_ptr(),
                out.data_ptr(),
                batch,
                elements,
                packed.shape[1],
                packed.shape[0],
                stream=stream,
            )

        return launch

    def model_call(self, model: Any, faces: Any) -> Callable[[], None]:
        def call() -> None:
            model(faces)
            self.synchronize()

        return call

    def repeated(self, call: Callable[[], object], repeats: int) -> Callable[[], None]:
        """``repeats`` back-to-back calls, then a synchronize: one CUDA graph replay on a GPU."""
        torch = self.torch
        if self.device.type != "cuda":

            def loop() -> None:
                for _ in range(repeats):
                    call()

            return loop
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            call()  # warm-up off the capture, as torch asks
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeats):
                call()

        def replay() -> None:
            graph.replay()
            self.synchronize()

        return replay

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def add_row(self, path: str, part: str, precision: str, stats: LatencyStats, **extra: Any) -> None:
        row = {"path": path, "part": part, "precision": precision, **_finite(stats.to_dict()), **extra}
        self.result["rows"].append(row)
        print(f"{path:24s} batch {row['batch']:4d}: p50 {row['p50_ms']:9.4f} ms, {row['throughput_img_s']:11.1f} img/s")

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return self.torch.cuda.get_device_name(self.device)
        return f"CPU ({cpu_model()})"

    def describe_device(self) -> dict:
        device = {"type": self.device.type, "name": self.device_name()}
        if self.device.type == "cuda":
            properties = self.torch.cuda.get_device_properties(self.device)
            device["compute_capability"] = f"{properties.major}.{properties.minor}"
            device["memory_gib"] = round(properties.total_memory / 2**30, 1)
            device["driver"] = _nvidia_smi_driver()
        return device

    def versions(self) -> dict:
        torch = self.torch
        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "numpy": np.__version__,
            "cupy": _module_version("cupy"),
            "cuda-python": _module_version("cuda.bindings"),
            "triton": _module_version("triton"),
        }


def inlined_fdm(features: Any, occlusion: Any, dictionary: Any) -> Any:
    """The exported graph's standard-op FDM body, in PyTorch: ``features * relu(1 - occlusion @ (1 - D))``."""
    discard = 1 - dictionary.reshape(dictionary.shape[0], -1)
    return features * (1 - occlusion @ discard).relu().reshape(features.shape)


def finish(result: dict) -> dict:
    """Add the ratios against the baseline and the verdict on the mandatory paths."""
    rows = result["rows"]
    baseline = {r["batch"]: r["throughput_img_s"] for r in rows if r["path"] == BASELINE}
    inlined = {(r["precision"], r["batch"]): r["throughput_img_s"] for r in rows if r["path"].startswith("fdm-inlined")}
    for row in rows:
        if row["part"] == "model" and row["batch"] in baseline:
            row["vs_eager_fp32"] = row["throughput_img_s"] / baseline[row["batch"]]
        elif row["path"].startswith("fdm-kernel") and (row["precision"], row["batch"]) in inlined:
            row["vs_inlined"] = row["throughput_img_s"] / inlined[row["precision"], row["batch"]]
    status = result["status"]
    mandatory = [p for p in status if p != COMPILED and not status[p].startswith("skipped")]
    result["mandatory_passed"] = bool(mandatory) and all(status[p] == "ok" for p in mandatory)
    return result


def write_results(result: dict, out: Path) -> list[Path]:
    """``gpu-<device-slug>.json`` and ``.md`` under ``out``."""
    stem = f"gpu-{device_slug(result['device']['name'])}" + ("-smoke" if result["config"]["smoke"] else "")
    return save_report(result, markdown(result), out, stem)


def device_slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def markdown(result: dict) -> str:
    versions, device = result["versions"], result["device"]
    gpu = (
        f"compute capability {device['compute_capability']}, {device['memory_gib']} GiB, driver {device['driver']}; "
        if device["type"] == "cuda"
        else ""
    )
    lines = [
        f"# {result['title']}",
        "",
        f"{gpu}torch {versions['torch']}, CUDA {versions['cuda']}, "
        f"cuDNN {versions['cudnn']}, TF32 matmul/cuDNN {versions['tf32_matmul']}/{versions['tf32_cudnn']}, "
        f"cuda-python {versions['cuda-python']}, CuPy {versions['cupy']}; {result['date']}",
        "",
        f"Model: {result['model']['architecture']} ({result['model']['weights']})",
        "",
        f"Latency: {result['latency_definition']}",
        "",
        "| path | batch | img/s | p50 ms | p90 ms | vs eager FP32 | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in result["rows"] if r["part"] == "model"):
        ratio = f"{r['vs_eager_fp32']:.2f}x" if "vs_eager_fp32" in r else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['throughput_img_s']:.1f} | {r['p50_ms']:.3f} | "
            f"{r['p90_ms']:.3f} | {ratio} | {compile_s} |"
        )
    shape = "x".join(str(n) for n in result["fdm_feature_shape"])
    lines += [
        "",
        f"FDM step alone on [N, {shape}]:",
        "",
        "| path | batch | img/s | p50 ms | kernel vs inlined (throughput) | equals reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in result["rows"] if r["part"] == "fdm"):
        ratio = f"{r['vs_inlined']:.2f}x" if "vs_inlined" in r else "-"
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['throughput_img_s']:.0f} | {r['p50_ms']:.4f} | {ratio} | "
            f"{'yes' if r['equals_reference'] else 'NO'} |"
        )
    verdict = "passed" if result["mandatory_passed"] else "FAILED"
    lines += ["", f"Mandatory paths: {verdict}. Status of every path:", ""]
    lines += [f"- {path}: {status}" for path, status in result["status"].items()]
    return "\n".join(lines) + "\n"


def judge_gpu_tests(
    report: Path, root: Path = Path(), required: tuple[str, ...] = REQUIRED_GPU_TESTS
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a junit report of ``pytest -m gpu``, test files relative to ``root``.

    Problems: a failed or erroring test; a test of a ``required`` file skipped, or none in the report; a
    test module holding gpu tests that could not be imported; no test passed at all. A module
    without gpu tests that could not be imported is only a warning: it has nothing to run here.
    """
    if not report.is_file():
        return [f"no test report at {report}: pytest did not run or did not finish (see its output)"], []
    problems, warnings, seen, ran = [], [], set(), set()
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        file = _test_file(case.get("classname") or case.get("name", ""))
        seen.add(file)
        label = f"{file}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            ran.add(file)
        elif outcome.get("message") == "collection failure":
            source = root / file
            has_gpu_tests = source.is_file() and "mark.gpu" in source.read_text(encoding="utf-8")
            (problems if has_gpu_tests or file in required else warnings).append(
                f"{file} could not be imported: {_last_line(outcome.text)}"
            )
        elif outcome.tag == "skipped":
            if file in required:
                problems.append(f"{label} was skipped on a GPU machine: {outcome.get('message')}")
        else:
            problems.append(f"{label}: {outcome.tag}: {outcome.get('message')}")
    problems += [f"{file}: no gpu test of it is in the report" for file in required if file not in seen]
    if not ran:
        problems.append("no gpu test passed")
    return problems, warnings


def check_test_report(report: Path) -> int:
    """Print the verdict on a junit report of ``pytest -m gpu``; the exit status: 0 passed, 1 failed."""
    problems, warnings = judge_gpu_tests(report)
    for warning in warnings:
        print(f"gpu tests: warning: {warning}")
    if problems:
        print("gpu tests: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("gpu tests: every gpu test that can run without TensorRT ran and passed")
    return 0


def check_config(
    device: str = "cuda",
    smoke: bool = False,
    batches: tuple[int, ...] | None = None,
    seconds: float | None = None,
    compile_backend: str | None = None,
    compile_budget_s: float | None = None,
) -> CheckConfig:
    """The defaults, or ``SMOKE``'s with ``smoke``, overridden by whichever of the others is given."""
    overrides: dict[str, Any] = {"device": device, **(SMOKE if smoke else {})}
    given = {
        "batches": batches,
        "seconds": seconds,
        "compile_backend": compile_backend,
        "compile_budget_s": compile_budget_s,
    }
    overrides.update({name: value for name, value in given.items() if value is not None})
    return CheckConfig(**overrides)


def run_check(config: CheckConfig, out: Path) -> int:
    """Measure every path into ``out``; the exit status: 0 when every mandatory path ran and every equality
    held, else 1. Raises ``NoGpuError`` where ``config.device`` is cuda and torch sees no GPU."""
    result = GpuCheck(config).run(out)
    failed = [f"{path}: {status}" for path, status in result["status"].items() if status.startswith("failed")]
    if not result["mandatory_passed"]:
        print("gpu-check: a mandatory path failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    if failed:
        print("gpu-check: optional paths failed (recorded in the results):\n  " + "\n  ".join(failed))
    return 0


def _bind_primary_context(index: int) -> None:
    """Make GPU ``index``'s primary context, the one torch uses, current for cuda-python's driver API."""
    from cuda.bindings import driver

    def check(result: tuple, what: str) -> Any:
        status, *values = result
        if int(status) != 0:
            raise RuntimeError(f"{what} failed: {status!r}")
        return values[0] if values else None

    check(driver.cuInit(0), "cuInit")
    device = check(driver.cuDeviceGet(index), "cuDeviceGet")
    context = check(driver.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
    check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")


def _per_call(stats: LatencyStats, repeats: int) -> LatencyStats:
    scaled = {f.name: getattr(stats, f.name) / repeats for f in fields(stats) if f.name.endswith("_ms")}
    return replace(stats, **scaled)


def _finite(row: dict) -> dict:
    """NaN (a window too short for a spread) as null, so the JSON stays standard."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _test_file(dotted: str) -> str:
    """``tests.test_x.TestY`` (a junit classname) -> ``tests/test_x.py``."""
    parts = dotted.split(".")
    end = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1)
    return "/".join(parts[: end + 1]) + ".py"


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no details"


def _reason(error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line[:300]}"


def _module_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # a broken install is reported, not fatal
        return f"not importable ({type(error).__name__})"
    return str(getattr(module, "__version__", "unknown"))


def _nvidia_smi_driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi)"
    result = subprocess.run(
        [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else "unknown"
