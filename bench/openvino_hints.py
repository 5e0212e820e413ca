"""OpenVINO's latency hint (one stream) against its throughput hint (several streams) under the batcher.

On a CPU with few cores the throughput hint runs two streams, each on half the cores; the
batcher keeps two batches in flight for it (the backend is pipelined), so both streams compute at
once. Closed-loop single-face clients (as in the concurrency sweep) are measured at several
concurrencies, the two hints alternating round by round so that machine drift falls on both.

    pdsn bench-openvino-hints --bundle pdsn-bench-bundle --precision int8 --out bench/results
"""

from __future__ import annotations

from pathlib import Path

from pdsn.bench.concurrency import SweepConfig, closed_loop
from pdsn.bench.machine import describe_machine

HINTS = ("latency", "throughput")


def compare_hints(bundle: Path, precision: str, clients: tuple[int, ...], config: SweepConfig, rounds: int) -> dict:
    from pdsn.model.sample_faces import occlusion_mix, seeded_faces
    from pdsn.runtime import Recognizer
    from pdsn.runtime.bundle import open_bundle

    contract = open_bundle(bundle).contract
    faces = seeded_faces(32, seed=4242, size=(contract.height, contract.width))
    occlusion = occlusion_mix(32, seed=4242)
    rows: list[dict] = []
    for round_index in range(rounds):
        for hint in HINTS if round_index % 2 == 0 else HINTS[::-1]:
            with Recognizer.open(
                bundle,
                backend="openvino",
                precision=precision,
                hint=hint,
                max_batch=config.max_batch,
                max_delay_ms=config.delays_ms[0],
                queue_size=max(4 * config.max_batch, max(clients)),
                allow_ungated=True,
            ) as recognizer:
                info = recognizer.backend_info
                for count in clients:
                    row = closed_loop(recognizer, count, config, faces, occlusion)
                    rows.append(
                        {
                            "hint": hint,
                            "round": round_index,
                            "streams": info["infer_requests"],
                            "threads": info["threads"],
                            **row,
                        }
                    )
                    print(
                        f"  round {round_index} {hint:<10} {count:>2} clients: {row['throughput_img_s']:6.1f} "
                        f"img/s, p99 {row['p99_ms']:7.1f} ms, mean batch {row['mean_batch']:.1f}",
                        flush=True,
                    )
    summary = []
    for count in clients:
        mean = {
            hint: sum(r["throughput_img_s"] for r in rows if r["hint"] == hint and r["clients"] == count) / rounds
            for hint in HINTS
        }
        p99 = {hint: max(r["p99_ms"] for r in rows if r["hint"] == hint and r["clients"] == count) for hint in HINTS}
        summary.append(
            {
                "clients": count,
                "throughput_img_s": mean,
                "worst_p99_ms": p99,
                "throughput_over_latency": mean["throughput"] / mean["latency"],
            }
        )
    return {
        "bundle": str(bundle),
        "precision": precision,
        "config": {**config.__dict__, "rounds": rounds},
        "machine": describe_machine(("pdsn-deploy", "numpy", "openvino")),
        "rows": rows,
        "summary": summary,
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"# OpenVINO latency vs throughput hint under the batcher ({result['precision']})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        f"Bundle `{result['bundle']}`; closed-loop single-face clients, max_batch {result['config']['max_batch']}, "
        f"max_delay_ms {result['config']['delays_ms'][0]:g}, {result['config']['seconds']:g} s windows, "
        f"{result['config']['rounds']} rounds alternating the hints.",
        "",
        "| clients | latency hint img/s | throughput hint img/s | ratio | worst p99 ms (latency / throughput) |",
        "|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        t, p = s["throughput_img_s"], s["worst_p99_ms"]
        lines.append(
            f"| {s['clients']} | {t['latency']:.1f} | {t['throughput']:.1f} | "
            f"{s['throughput_over_latency']:.2f}x | {p['latency']:.0f} / {p['throughput']:.0f} |"
        )
    return "\n".join(lines) + "\n"
