"""``pdsn train-demo``: the whole training pipeline on SYNTHETIC faces, seeded, into one folder.

stage 0 (CosFace, clean faces) -> 25 PDSNs (stage 1, cached frozen-trunk features) -> mean masks
and the binarised dictionary -> stage 2 fine-tuning with FDMs -> verification on held-out
synthetic identities (clean, and occluded with and without FDM), for the stage-0 network and the
fine-tuned one.

The folder gets what deployment needs and nothing else: ``model.pth`` (the fine-tuned network,
reference format) and ``classifier.pth``, ``dictionary.npz`` (binary, tau recorded),
``mean_masks/cell_JJ/mean_mask.txt``, ``evaluation.json``/``.md`` and ``pipeline.json`` (settings,
seeds, per-step seconds, loss histories). The stage-0 network and the 25 stage-1 checkpoints go to
``work`` (a temporary folder unless one is given).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pdsn.model.dictionary import DEFAULT_TAU, load_dictionary
from pdsn.model.grid import NUM_CELLS
from pdsn.model.network import Architecture
from pdsn.train.data import (
    DEFAULT_PAIRS_PER_CELL,
    SYNTHETIC_IDENTITIES,
    SYNTHETIC_IMAGES_PER_IDENTITY,
    synthetic_identities,
)
from pdsn.train.dictionary_extraction import extract_mean_masks, write_dictionary
from pdsn.train.evaluate import (
    EVAL_IDENTITIES,
    EVAL_IMAGES_PER_IDENTITY,
    EVAL_PAIRS,
    EVAL_SEED,
    TorchEmbedder,
    evaluation_report,
    format_table,
    occlude_seconds,
    synthetic_pairs,
    write_report,
)
from pdsn.train.features import CellFeatureCache
from pdsn.train.stage0 import TINY_ARCHITECTURE, save_stage0, torch_threads, train_recognition
from pdsn.train.stage1 import Stage1Config, find_pdsn_checkpoints, train_cells
from pdsn.train.stage2 import Stage2Config, finetune

PIPELINE_FILE = "pipeline.json"
EVALUATION_JSON = "evaluation.json"
EVALUATION_MARKDOWN = "evaluation.md"


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the demo model; the defaults make the committed default model."""

    architecture: Architecture = TINY_ARCHITECTURE
    identities: int = SYNTHETIC_IDENTITIES
    images_per_identity: int = SYNTHETIC_IMAGES_PER_IDENTITY
    seed: int = 0
    stage0_epochs: int = 8
    stage0_lr: float = 0.1
    stage0_batch_size: int = 32
    stage1: Stage1Config = Stage1Config()
    pairs_per_cell: int | None = DEFAULT_PAIRS_PER_CELL
    stage2: Stage2Config = Stage2Config()
    tau: float = DEFAULT_TAU
    eval_pairs: int = EVAL_PAIRS
    eval_seed: int = EVAL_SEED
    eval_identities: int = EVAL_IDENTITIES
    eval_images_per_identity: int = EVAL_IMAGES_PER_IDENTITY
    threads: int | None = 1

    def seeded(self) -> DemoConfig:
        """This config with ``seed`` also in the stage-1 and stage-2 settings."""
        return dataclasses.replace(
            self,
            stage1=dataclasses.replace(self.stage1, seed=self.seed),
            stage2=dataclasses.replace(self.stage2, seed=self.seed),
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return data


@dataclass
class DemoResult:
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def train_demo(
    out: str | Path,
    config: DemoConfig = DemoConfig(),
    work: str | Path | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the pipeline into ``out`` (created; must be empty or absent); see the module doc."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"--out {out} exists and is not an empty folder; choose a new folder (the demo model "
            "is written from scratch)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if work is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="pdsn-demo-work-"))
        stack.enter_context(torch_threads(config.threads))
        return _run(out, Path(work), config.seeded(), progress)


def _run(out: Path, work: Path, config: DemoConfig, progress: bool) -> DemoResult:
    result = DemoResult(out)
    clock = _Clock(result.seconds, progress)
    faces = synthetic_identities(config.identities, config.images_per_identity, config.seed)

    with clock("stage 0", "CosFace recognition network on clean synthetic faces"):
        model, classifier, stage0_history = train_recognition(
            config.architecture,
            faces.images,
            faces.labels,
            epochs=config.stage0_epochs,
            batch_size=config.stage0_batch_size,
            lr=config.stage0_lr,
            seed=config.seed,
            progress=progress,
        )
        save_stage0(work / "stage0", model, classifier, epoch=config.stage0_epochs)

    with clock("stage 1", "25 PDSNs on cached frozen-trunk features"):
        cache = CellFeatureCache(model, faces, seed=config.seed, pairs_per_cell=config.pairs_per_cell)
        stage1_history = train_cells(
            model,
            classifier,
            cache,
            list(range(NUM_CELLS)),
            work / "stage1",
            config.stage1,
            progress,
            release=False,
        )

    with clock("dictionary", "mean masks over the stage-1 pairs, binarised"):
        mean_masks = extract_mean_masks(find_pdsn_checkpoints(work / "stage1"), cache)
        del cache
        files = write_dictionary(out, mean_masks, config.tau, source=faces.source)
        dictionary = load_dictionary(files.dictionary)

    with clock("stage 2", "fine-tuning with occluded faces and their FDMs"):
        tuned, tuned_classifier, stage2_history = finetune(
            model, classifier, dictionary, faces, config.stage2, progress
        )
        save_stage0(out, tuned, tuned_classifier, epoch=config.stage2.epochs)

    with clock("evaluation", "verification on held-out synthetic identities"):
        pairs = synthetic_pairs(
            config.eval_pairs, config.eval_seed, config.eval_identities, config.eval_images_per_identity
        )
        occluded = occlude_seconds(pairs, config.eval_seed)
        embedders = [
            TorchEmbedder(model, dictionary, "stage 0 (before fine-tuning)"),
            TorchEmbedder(tuned, dictionary, "stage 2 (the demo model)"),
        ]
        result.report = evaluation_report(embedders, pairs, occluded)

    write_report(
        result.report,
        out / EVALUATION_JSON,
        out / EVALUATION_MARKDOWN,
        preface=_preface(config, faces.source, result.seconds),
    )
    pipeline = {
        "what": "SYNTHETIC demo model: trained end to end by `pdsn train-demo` on synthetic faces; "
        "it has never seen a real face and is not for recognising people",
        "config": config.to_dict(),
        "data": faces.source,
        "seconds": result.seconds,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "history": {
            "stage0": [dataclasses.asdict(h) for h in stage0_history],
            "stage1": {str(cell): [dataclasses.asdict(h) for h in history] for cell, history in stage1_history.items()},
            "stage2": [dataclasses.asdict(h) for h in stage2_history],
        },
        "files": sorted([PIPELINE_FILE, *(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())]),
    }
    (out / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2) + "\n", encoding="utf-8")
    if progress:
        print(f"\n{format_table(result.report)}\n\nwrote {out} in {sum(result.seconds.values()):.0f} s")
    return result


def _preface(config: DemoConfig, data: str, seconds: dict[str, float]) -> str:
    steps = ", ".join(f"{step} {value:.0f} s" for step, value in seconds.items())
    return (
        "# The demo model (SYNTHETIC)\n\n"
        f"`pdsn train-demo` (seed {config.seed}, {config.threads or 'default'} torch thread(s)) trained "
        f"{config.architecture.name} (layers {list(config.architecture.layers)}, widths "
        f"{list(config.architecture.widths)}, features {'x'.join(map(str, config.architecture.feature_shape))}) "
        f"on {data}: stage 0 {config.stage0_epochs} epochs, 25 PDSNs of {config.stage1.epochs} epochs on "
        f"{config.pairs_per_cell or 'one per face'} pairs each, "
        f"tau {config.tau}, stage 2 {config.stage2.epochs} epochs. It has never seen a real face. "
        f"Time: {steps}; {sum(seconds.values()):.0f} s in all.\n\n"
        "The method's claim is that FDM helps on occluded pairs: compare the occluded rows with FDM on "
        "and off. Clean pairs have no occluded cell, so FDM changes nothing there.\n"
    )


class _Clock:
    """Times named steps into ``seconds`` and announces them."""

    def __init__(self, seconds: dict[str, float], progress: bool) -> None:
        self.seconds, self.progress = seconds, progress

    @contextlib.contextmanager
    def __call__(self, step: str, what: str) -> Iterator[None]:
        if self.progress:
            print(f"[{len(self.seconds) + 1}/5] {step}: {what}", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[step] = round(time.perf_counter() - started, 2)
        if self.progress:
            print(f"      {self.seconds[step]:.1f} s", flush=True)
