"""The benchmark and real-face commands moved from `python -m pdsn.bench.<name>` under `pdsn`: their arguments
through the real parser (defaults, and a bad value refused by name), and each handler's call into its bench
module with the measuring function stood in for (no benchmark runs here)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from pdsn.cli import main, parse_args


def _refused(argv: list[str], capsys) -> str:
    """The error argparse prints for ``argv`` (it exits 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_pdsn_bench_keeps_its_options_beside_the_new_commands():
    args = parse_args(["bench", "--gallery", "1000,10000", "--store", "pgvector", "--ef-search", "100"])
    assert (args.command, args.gallery, args.store, args.ef_search) == ("bench", (1000, 10000), "pgvector", (100,))
    assert parse_args(["bench"]).backends == ("onnxruntime", "openvino")


def test_pdsn_bench_gallery_results_keep_their_names(monkeypatch, tmp_path):
    import pdsn.bench.gallery as gallery

    calls = []
    monkeypatch.setattr(gallery, "run_gallery_benchmark", lambda *given: calls.append(given) or {"rows": []})
    monkeypatch.setattr(gallery, "gallery_markdown", lambda result: "# gallery\n")
    out = tmp_path / "out"
    assert main(["bench", "--bundle", "b", "--work", str(tmp_path / "w"), "--gallery", "300", "--out", str(out)]) == 0
    assert [(bundle, config.sizes, work) for bundle, config, work in calls] == [
        (Path("b"), (300,), tmp_path / "w-galleries")
    ]
    assert sorted(p.name for p in out.iterdir()) == ["cpu-gallery.json", "cpu-gallery.md"]


def test_bench_ann_choice_defaults_and_a_bad_size(capsys):
    args = parse_args(["bench-ann-choice"])
    assert (args.sizes, args.out, args.name) == ((10_000, 100_000), Path("bench/results"), "cpu-ann-choice")
    assert "argument --sizes: expected positive integers, got '1000,0'" in _refused(
        ["bench-ann-choice", "--sizes", "1000,0"], capsys
    )


def test_bench_ann_choice_refuses_a_gallery_smaller_than_its_probes(tmp_path, capsys):
    assert main(["bench-ann-choice", "--sizes", "100,10000", "--out", str(tmp_path)]) == 2
    assert (
        "pdsn bench-ann-choice: error: gallery sizes must each be at least 200 (the probes are drawn from it), "
        "got (100, 10000)" in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())


def test_bench_ann_choice_saves_and_prints_its_report(monkeypatch, tmp_path, capsys):
    import pdsn.bench.ann_choice as ann_choice

    sizes = []
    monkeypatch.setattr(ann_choice, "run", lambda given: sizes.append(given) or {"rows": []})
    monkeypatch.setattr(ann_choice, "markdown", lambda result: "# ann\n")
    assert main(["bench-ann-choice", "--sizes", "300", "--out", str(tmp_path), "--name", "ann"]) == 0
    assert sizes == [(300,)]
    assert json.loads((tmp_path / "ann.json").read_text()) == {"rows": []}
    assert (tmp_path / "ann.md").read_text() == "# ann\n" and "# ann" in capsys.readouterr().out


def test_bench_openvino_hints_defaults_and_bad_values(capsys):
    args = parse_args(["bench-openvino-hints"])
    assert (args.bundle, args.precision, args.clients) == (Path("pdsn-bench-bundle"), "int8", (1, 4, 8, 16))
    assert (args.max_batch, args.delay_ms, args.seconds, args.rounds) == (8, 2.0, 6.0, 2)
    assert (args.out, args.name) == (Path("bench/results"), "cpu-openvino-hints")
    assert "argument --precision: invalid choice: 'bf16'" in _refused(
        ["bench-openvino-hints", "--precision", "bf16"], capsys
    )
    assert "argument --delay-ms: expected milliseconds >= 0, got '-1'" in _refused(
        ["bench-openvino-hints", "--delay-ms", "-1"], capsys
    )
    assert "argument --rounds: expected a whole number >= 1, got 0" in _refused(
        ["bench-openvino-hints", "--rounds", "0"], capsys
    )


def test_bench_openvino_hints_passes_its_sweep_to_compare_hints(monkeypatch, tmp_path):
    import pdsn.bench.openvino_hints as openvino_hints

    calls = []
    monkeypatch.setattr(openvino_hints, "compare_hints", lambda *given: calls.append(given) or {})
    monkeypatch.setattr(openvino_hints, "markdown", lambda result: "# hints\n")
    argv = ["bench-openvino-hints", "--bundle", "b", "--clients", "1,4", "--delay-ms", "0", "--seconds", "3"]
    assert main([*argv, "--max-batch", "4", "--rounds", "3", "--out", str(tmp_path)]) == 0
    ((bundle, precision, clients, config, rounds),) = calls
    assert (bundle, precision, clients, rounds) == (Path("b"), "int8", (1, 4), 3)
    assert (config.max_batch, config.delays_ms, config.seconds) == (4, (0.0,), 3.0)
    assert (tmp_path / "cpu-openvino-hints.md").is_file()


def test_bench_triton_defaults_and_a_bad_window(capsys):
    args = parse_args(["bench-triton"])
    assert (args.bundle, args.precision, args.seconds) == (None, "fp32", 8.0)
    assert args.work == Path(tempfile.gettempdir()) / "pdsn-bench-triton" and args.env == Path(".triton-env")
    assert (args.out, args.name) == (Path("bench/results"), "cpu-triton-demo-model")
    assert "argument --seconds: expected seconds > 0, got '0'" in _refused(["bench-triton", "--seconds", "0"], capsys)


def test_bench_triton_runs_with_resolved_folders(monkeypatch, tmp_path):
    import pdsn.bench.triton as triton

    calls = []
    monkeypatch.setattr(triton, "run", lambda *given: calls.append(given) or {})
    monkeypatch.setattr(triton, "markdown", lambda result: "# triton\n")
    monkeypatch.chdir(tmp_path)
    assert main(["bench-triton", "--work", "w", "--precision", "int8", "--seconds", "2", "--out", "out"]) == 0
    assert calls == [(None, tmp_path.resolve() / "w", tmp_path.resolve() / ".triton-env", "int8", 2.0)]
    assert (tmp_path / "out" / "cpu-triton-demo-model.json").is_file()


def test_gpu_check_defaults_and_bad_values(capsys):
    args = parse_args(["gpu-check"])
    assert (args.out, args.device, args.smoke, args.check_test_report) == (Path("bench/results"), "cuda", False, None)
    assert (args.batches, args.seconds, args.compile_backend, args.compile_budget_s) == (None, None, None, None)
    assert "argument --device: invalid choice: 'tpu'" in _refused(["gpu-check", "--device", "tpu"], capsys)
    assert "argument --batches: expected comma-separated positive integers, got '1,x'" in _refused(
        ["gpu-check", "--batches", "1,x"], capsys
    )


def test_gpu_check_options_override_the_smoke_preset():
    from pdsn.bench.gpu_check import SMOKE, CheckConfig, check_config

    assert check_config() == CheckConfig()
    config = check_config("cpu", smoke=True, batches=(4,), compile_budget_s=5.0)
    assert config == CheckConfig(**{**SMOKE, "device": "cpu", "batches": (4,), "compile_budget_s": 5.0})


def test_gpu_check_judges_a_test_report(tmp_path, capsys):
    assert main(["gpu-check", "--check-test-report", str(tmp_path / "none.xml")]) == 1
    assert f"no test report at {tmp_path / 'none.xml'}" in capsys.readouterr().err


def test_real_faces_defaults_and_bad_values(capsys):
    args = parse_args(["real-faces", "--out", "faces"])
    assert (args.out, args.per_face, args.seed, args.alignment) == (Path("faces"), 64, 0, "dlib-chip-150")
    assert "the following arguments are required: --out" in _refused(["real-faces"], capsys)
    assert "argument --per-face: expected a whole number >= 1, got 0" in _refused(
        ["real-faces", "--out", "f", "--per-face", "0"], capsys
    )
    assert "argument --alignment: invalid choice: 'arcface'" in _refused(
        ["real-faces", "--out", "f", "--alignment", "arcface"], capsys
    )


def test_real_faces_writes_through_write_identity_folders(monkeypatch, capsys):
    import pdsn.bench.real_faces as real_faces

    calls = []
    monkeypatch.setattr(real_faces, "write_identity_folders", lambda *given: calls.append(given) or {"obama": 6})
    assert main(["real-faces", "--out", "f", "--per-face", "2", "--seed", "1", "--alignment", "similarity-112x96"]) == 0
    assert calls == [(Path("f"), 2, 1, "similarity-112x96")]
    assert "wrote 6 chips of 1 people under f" in capsys.readouterr().out


def test_evaluate_real_requires_its_inputs(capsys):
    argv = ["evaluate-real", "--checkpoint", "m.pth", "--dictionary", "d.npz", "--work", "w", "--out", "o"]
    args = parse_args(argv)
    assert (args.checkpoint, args.dictionary, args.work, args.out, args.estimator) == (
        Path("m.pth"),
        Path("d.npz"),
        Path("w"),
        Path("o"),
        None,
    )
    assert "the following arguments are required: --dictionary" in _refused(
        ["evaluate-real", "--checkpoint", "m.pth", "--work", "w", "--out", "o"], capsys
    )


def test_evaluate_real_calls_the_evaluation(monkeypatch, capsys):
    import pdsn.bench.real_model_report as report

    calls = []
    monkeypatch.setattr(report, "evaluate_on_real_faces", lambda *given: calls.append(given) or {})
    monkeypatch.setattr(report, "markdown", lambda result: "# real faces\n")
    argv = ["evaluate-real", "--checkpoint", "m.pth", "--dictionary", "d.npz", "--work", "w", "--out", "o"]
    assert main([*argv, "--estimator", "e.pth"]) == 0
    assert calls == [(Path("m.pth"), Path("d.npz"), Path("w"), Path("o"), Path("e.pth"))]
    assert "# real faces" in capsys.readouterr().out


def test_the_pgvector_replica_process_calls_print_replica_with_its_typed_arguments(monkeypatch):
    """``_replica`` starts ``python -c CODE``; CODE run here, with the subprocess and the function stood in for."""
    import subprocess

    import pdsn.bench.gallery_pgvector as gallery_pgvector

    started, called = [], []

    def fake_run(command, **options):
        started.append(command)
        return subprocess.CompletedProcess(command, 0, stdout='{"first_s": 0.5}\n')

    monkeypatch.setattr(gallery_pgvector.subprocess, "run", fake_run)
    monkeypatch.setattr(gallery_pgvector, "print_replica", lambda *given: called.append(given))
    bundle = Path("/tmp/it's a bundle")
    location = "pgvector+embedded:///tmp/g"
    faces = gallery_pgvector.SeededFaces(64, 7)
    assert gallery_pgvector._replica(bundle, location, faces, 10) == {"first_s": 0.5}
    ((executable, flag, code),) = started
    assert (executable, flag) == (sys.executable, "-c")
    exec(code, {})
    assert called == [(bundle, location, 9, 64, 7)]
