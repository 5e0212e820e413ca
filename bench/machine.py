"""A description of the machine a measurement ran on, for reports."""

from __future__ import annotations

import os
import platform

from pdsn.model.bundle_format import package_versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> str:
    """The CPU's model and widest vector instructions ("AMD EPYC, AVX-512 VNNI"): machines of one model name can
    differ in them, and so in speed."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    except OSError:
        flags = set()
    widest = next(
        (
            name
            for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
            if flag in flags
        ),
        "",
    )
    return f"{cpu_model()}, {widest}" if widest else cpu_model()


def describe_machine(packages: tuple[str, ...] = ("pdsn-deploy", "numpy", "onnxruntime", "torch")) -> dict:
    versions = package_versions(packages)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": versions.pop("python"),
        "packages": versions,
    }


# Windows in which the hypervisor ran other guests for more than this share (in %) of this machine's
# CPU time are flagged: their speed says more about the host than about the code.
STOLEN_WINDOW_PCT = 10.0


def cpu_counters() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """CPU seconds (user + system) a process has run, or one of its threads; None where /proc has no such entry."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path, encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime after the name


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """The share (in %) of CPU time between two ``cpu_counters`` that the hypervisor gave to others (NaN: unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return float("nan")
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])
