"""Benchmark results as terminal tables, Markdown, JSON and a latency-throughput plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = (
    "path",
    "batch",
    "img/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "vs PyTorch",
    "direct img/s",
    "overhead",
    "prep/queue/compute ms",
)
SWEEP_COLUMNS = (
    "path",
    "delay ms",
    "clients",
    "img/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean batch",
    "submit/queue/compute ms",
    "overhead ms",
)


def table_rows(result: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in result["rows"]:
        direct = r.get("direct")
        rows.append(
            (
                _path(r),
                str(r["batch"]),
                f"{r['throughput_img_s']:.1f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p90_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-",
                f"{direct['throughput_img_s']:.1f}" if direct else "-",
                f"{r['overhead_pct']:+.1f}% ({r['overhead_ms']:+.2f} ms)" if direct else "-",
                _split(r.get("split_ms"), ("preprocess", "queue", "compute")),
            )
        )
    return rows


def sweep_rows(result: dict) -> list[tuple[str, ...]]:
    return [
        (
            _path(r),
            f"{r['max_delay_ms']:g}",
            str(r["clients"]),
            f"{r['throughput_img_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['mean_batch']:.1f}",
            _split(r["split_ms"], ("submit", "queue", "compute")),
            f"{r['overhead_ms']:.2f}",
        )
        for r in result.get("concurrency", [])
    ]


def goal_lines(result: dict) -> list[str]:
    lines = []
    for goal in result.get("goals", []):
        verdict = "met" if goal["met"] else "missed"
        if "throughput_ratio" in goal:
            lines.append(
                f"{goal['path']}, delay {goal['max_delay_ms']:g} ms: {goal['goal']}: throughput "
                f"{100 * goal['throughput_ratio']:.0f}% (goal >= 90%), p99 {goal['p99_ms']:.1f} ms "
                f"(goal <= {goal['p99_bound_ms']:.1f} ms): {verdict}"
            )
        elif "ratio" in goal:
            lines.append(
                f"{goal['path']}: {goal['goal']}: {goal['ratio']:.1f}x (goal >= {goal['bound']:g}x): {verdict}"
            )
        else:
            lines.append(
                f"{goal['path']}: {goal['goal']}: {goal['overhead_ms']:.3f} ms "
                f"(goal <= {goal['bound_ms']} ms): {verdict}"
            )
    return lines


def noise_warning(result: dict) -> str | None:
    noisy = sum(r["noisy"] for r in [*result["rows"], *result.get("concurrency", [])])
    if not noisy:
        return None
    return (
        f"warning: {noisy} configurations marked (noisy) varied by more than 10% between the thirds "
        f"of their window or had p90 > 1.25 x p50; rerun on a quiet machine, or with more --seconds"
    )


def terminal_table(result: dict) -> str:
    parts = [_aligned(COLUMNS, table_rows(result))]
    if result.get("concurrency"):
        parts.append(
            "concurrency sweep (closed-loop clients through the dynamic batcher):\n"
            + _aligned(SWEEP_COLUMNS, sweep_rows(result))
        )
    notes = goal_lines(result) + [f"skipped {name}: {reason}" for name, reason in result["skipped"].items()]
    warning = noise_warning(result)
    return "\n\n".join(parts) + "".join(f"\n{line}" for line in [*notes, *([warning] if warning else [])])


def markdown(result: dict) -> str:
    machine = result["machine"]
    header = (
        f"# pdsn bench: {result['model']} ({result['weights']} weights)\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f"\n\nLatency: {result['latency_definition']}\n\n"
    )
    body = _markdown_table(COLUMNS, table_rows(result))
    if result.get("concurrency"):
        body += "\n## Concurrency sweep\n\n" + _markdown_table(SWEEP_COLUMNS, sweep_rows(result))
    goals = goal_lines(result)
    if goals:
        body += "\n## Goals\n\n" + "".join(f"- {line}\n" for line in goals)
    notes = "".join(
        f"\n- {precision}: the variant missed its accuracy gate ({'; '.join(parity.get('failures', []))}); "
        f"its rows are timing only, the runtime does not serve it"
        for precision, parity in result["variants"].items()
        if parity and not parity.get("passed", True)
    )
    notes += "".join(f"\n- skipped {name}: {reason}" for name, reason in result["skipped"].items())
    warning = noise_warning(result)
    notes += f"\n- {warning}" if warning else ""
    return header + body + notes + "\n"


def save_report(result: dict, text: str, out_dir: Path, stem: str) -> list[Path]:
    """A benchmark's ``result`` as ``stem.json`` and its Markdown ``text`` as ``stem.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(text, encoding="utf-8")
    return paths


def write_results(result: dict, out_dir: Path, stem: str) -> list[Path]:
    """JSON and Markdown, and the PNG plot when the run has a concurrency sweep."""
    from pdsn.bench.plot import plot_latency_throughput

    paths = save_report(result, markdown(result), out_dir, stem)
    if result.get("concurrency"):
        paths.append(plot_latency_throughput(result, out_dir / f"{stem}.png"))
    return paths


def _path(row: dict) -> str:
    return row["path"] + (" (noisy)" if row["noisy"] else "")


def _split(split: dict | None, keys: tuple[str, ...]) -> str:
    if not split:
        return "-"
    return "/".join("-" if math.isnan(split[k]) else f"{split[k]:.2f}" for k in keys)


def _aligned(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    rows = [columns, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return (
        "| "
        + " | ".join(columns)
        + " |\n|"
        + "---|" * len(columns)
        + "\n"
        + "".join("| " + " | ".join(row) + " |\n" for row in rows)
    )
