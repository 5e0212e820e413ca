"""Benchmark results as a terminal table, Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("path", "batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "vs PyTorch", "direct img/s", "overhead")


def table_rows(result: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in result["rows"]:
        direct = r.get("direct")
        rows.append((
            r["path"] + (" (noisy)" if r["noisy"] else ""),
            str(r["batch"]),
            f"{r['throughput_img_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-",
            f"{direct['throughput_img_s']:.1f}" if direct else "-",
            f"{r['overhead_pct']:+.1f}%" if direct else "-",
        ))
    return rows


def terminal_table(result: dict) -> str:
    rows = [COLUMNS, *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"skipped {name}: {reason}" for name, reason in result["skipped"].items()]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    machine = result["machine"]
    header = (
        f"# pdsn bench: {result['model']} ({result['weights']} weights)\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f"\n\nLatency: {result['latency_definition']}\n\n"
    )
    body = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body += "".join("| " + " | ".join(row) + " |\n" for row in table_rows(result))
    notes = "".join(
        f"\n- {precision}: the variant missed its accuracy gate ({'; '.join(parity.get('failures', []))}); "
        f"its rows are timing only, the runtime does not serve it"
        for precision, parity in result["variants"].items()
        if parity and not parity.get("passed", True)
    )
    notes += "".join(f"\n- skipped {name}: {reason}" for name, reason in result["skipped"].items())
    return header + body + notes + "\n"


def write_results(result: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    return paths
