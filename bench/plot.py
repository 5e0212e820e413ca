"""The concurrency sweep as a PNG: p99 latency against throughput, one curve per path and delay."""

from __future__ import annotations

from pathlib import Path


def plot_latency_throughput(result: dict, out: Path) -> Path:
    """Write the plot to ``out``; the direct engine call at the sweep's batch size is marked per path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the latency-throughput plot needs matplotlib: pip install 'pdsn-deploy[bench]'") from None

    sweeps = result["concurrency"]
    paths = list(dict.fromkeys(r["path"] for r in sweeps))
    colours = {path: plt.cm.tab10(i % 10) for i, path in enumerate(paths)}
    styles = ["-", "--", ":", "-."]
    delays = list(dict.fromkeys(r["max_delay_ms"] for r in sweeps))
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    for path in paths:
        for j, delay in enumerate(delays):
            points = [r for r in sweeps if r["path"] == path and r["max_delay_ms"] == delay]
            if not points:
                continue
            axes.plot(
                [r["throughput_img_s"] for r in points],
                [r["p99_ms"] for r in points],
                styles[j % len(styles)],
                marker="o",
                color=colours[path],
                label=f"{path}, max delay {delay:g} ms",
            )
            for r in points:
                axes.annotate(
                    str(r["clients"]),
                    (r["throughput_img_s"], r["p99_ms"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        batch = next(r["max_batch"] for r in sweeps if r["path"] == path)
        direct = [r for r in result["rows"] if r["path"] == path and r["batch"] == batch and "direct" in r]
        if direct:
            axes.axvline(direct[0]["direct"]["throughput_img_s"], color=colours[path], alpha=0.4, linewidth=1)
    machine = result["machine"]
    axes.set_xlabel("throughput (faces/s)")
    axes.set_ylabel("p99 latency per request (ms)")
    axes.set_title(
        f"{result['model']}: closed-loop clients (numbers) through the dynamic batcher\n"
        f"{machine['cpu']}, {machine['cores']} cores; vertical lines: direct engine call "
        f"at the batcher's max batch",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out
