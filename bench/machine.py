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


def describe_machine(packages: tuple[str, ...] = ("pdsn-deploy", "numpy", "onnxruntime", "torch")) -> dict:
    versions = package_versions(packages)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": versions.pop("python"),
        "packages": versions,
    }
