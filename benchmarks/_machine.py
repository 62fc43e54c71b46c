"""What a benchmark result must name: the CPU model, core count, memory, kernel, package
versions (RESULTS.md compares only runs on the same kind of machine)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def machine_info(dists) -> dict:
    """nproc, cpu, mem (`free -g`), kernel and the versions of `dists`."""
    mem = subprocess.run(["free", "-g"], check=False, capture_output=True, text=True).stdout
    versions = {"python": platform.python_version()}
    for dist in dists:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "mem": mem.strip(),
            "versions": versions, "kernel": platform.release()}
