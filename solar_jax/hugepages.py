"""Transparent huge pages for the host buffers of compiled programs (Linux, glibc).

XLA:CPU allocates a program's large buffers (a scan's stacked residuals and gradients, the
logits chunks) with malloc on every run, and glibc serves each from a fresh mmap: 4 KiB
pages that the kernel zero-fills on first touch. A SmolLM2-shaped train step (batch 4 x
256) took 973,000 page faults (3.7 GiB) and ~3 s of kernel time out of ~16 CPU-seconds;
these are the "zero-filled broadcasts" of benchmarks/RESULTS.md. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages (2 MiB) on those
mappings, which the kernel grants in its default THP mode (`madvise`) as well as in
`always`: the same step then takes ~4,000 faults and ~1 s of kernel time.

glibc reads tunables only when a process starts, so a compiling console command
re-executes itself once with the tunable added, first thing: decided from the command word
before the parser imports every command module (`reexec`, solar_jax.cli). `convert`,
`upscale` and `merge` do not restart. Their tensorstore reads fault in fresh
pages too, but whole `convert --to hf` processes with and without the tunable came out
even (benchmarks/convert_ab.py, RESULTS 2026-12-03 evening). An in-process call of
solar_jax.cli.main, or the Python API, is left alone: set GLIBC_TUNABLES yourself there.
SOLAR_JAX_HUGEPAGES=0 keeps the environment as it is.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "SOLAR_JAX_HUGEPAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode (always, madvise, never), None if unknown."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def wanted(environ, mode: str | None, libc: str) -> bool:
    """Whether a process with this environment should restart with the tunable set."""
    if environ.get(OPT_OUT, "1") == "0" or libc != "glibc":
        return False
    if mode not in ("always", "madvise"):
        return False
    return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def environment(environ) -> dict[str, str]:
    """environ with the tunable appended to GLIBC_TUNABLES (colon-separated)."""
    env = dict(environ)
    tunables = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def reexec() -> None:
    """Restart this process (same interpreter and arguments) with the tunable set, where
    it helps; returns only where it does not, or where the restart is refused."""
    if sys.platform != "linux" or not wanted(os.environ, thp_mode(), platform.libc_ver()[0]):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  environment(os.environ))
    except OSError:
        return  # run on without huge pages: slower, never wrong
