"""The console command restarts once with glibc's huge-page tunable (solar_jax.hugepages):
the decision, the environment it builds, the restart itself, and the page faults it saves."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from solar_jax import hugepages

TUNABLE = "glibc.malloc.hugetlb=1"


def test_wanted_only_where_it_helps():
    assert hugepages.wanted({}, "madvise", "glibc")
    assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "always", "glibc")
    assert not hugepages.wanted({}, "never", "glibc")
    assert not hugepages.wanted({}, None, "glibc")
    assert not hugepages.wanted({}, "madvise", "")  # musl or unknown libc
    assert not hugepages.wanted({"SOLAR_JAX_HUGEPAGES": "0"}, "madvise", "glibc")
    assert not hugepages.wanted({"GLIBC_TUNABLES": TUNABLE}, "madvise", "glibc")  # done once


def test_environment_appends_to_existing_tunables():
    assert hugepages.environment({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": TUNABLE}
    env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


needs_thp = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc"
    or hugepages.thp_mode() not in ("always", "madvise"),
    reason="needs Linux, glibc and transparent huge pages (always or madvise)")

# Allocates and touches 512 MiB three times with glibc's malloc, as XLA:CPU does a
# program's buffers on every run (numpy would not do: it asks for huge pages itself), and
# prints the minor page faults and whether the tunable is set.
_PROBE = """
import ctypes, os, resource
{before}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    block = libc.malloc(1 << 29); ctypes.memset(block, 1, 1 << 29); libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start,
      "{tunable}" in os.environ.get("GLIBC_TUNABLES", ""))
"""


def _probe(before: str, **env) -> tuple[int, bool]:
    code = _PROBE.format(before=before, tunable=TUNABLE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**_base_env(), **env}).stdout.split()
    return int(out[0]), out[1] == "True"


def _base_env():
    import os
    return {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", "SOLAR_JAX_HUGEPAGES")}


@needs_thp
def test_reexec_sets_the_tunable_once_and_cuts_page_faults():
    restart = "from solar_jax import hugepages; hugepages.reexec()"
    plain, set_plain = _probe("")
    huge, set_huge = _probe(restart)
    kept, set_kept = _probe(restart, SOLAR_JAX_HUGEPAGES="0")
    assert (set_plain, set_huge, set_kept) == (False, True, False)
    # 1.5 GiB in 2 MiB pages is a few thousand faults at most.
    assert huge < 40_000, huge
    if hugepages.thp_mode() == "madvise":  # under `always` every process gets huge pages
        # ... in 4 KiB pages it is ~390,000.
        assert plain > 300_000 and kept > 300_000, (plain, kept)


@needs_thp
@pytest.mark.parametrize("command, restarts", [("eval", True), ("convert", False)])
def test_console_restarts_only_where_it_compiles(tmp_path, command, restarts):
    """A compiling command restarts once with the tunable, before its parser is built (the
    flags are then checked in the restarted process: one error line, not two); convert,
    which compiles nothing, runs in the first process (no measured gain there)."""
    argv = {"eval": ["eval", str(tmp_path / "m"), "--task", "arc",
                     "--data", str(tmp_path / "missing.jsonl")],
            "convert": ["convert", str(tmp_path / "missing"), str(tmp_path / "out")]}[command]
    child = ("import os, sys\n"
             "print('tunables', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
             "from solar_jax import cli\n"
             f"sys.argv = ['solar-jax', *{argv!r}]\n"
             "sys.exit(cli.main())\n")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            env=_base_env())
    assert result.returncode == 2 and result.stderr.count("error:") == 1, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("tunables")]
    assert lines == ["tunables None"] + ([f"tunables {TUNABLE}"] if restarts else []), lines


def test_command_word_names_the_module():
    from solar_jax.cli import _command_word
    assert _command_word(["--help"]) is None
    assert _command_word(["build-math", "--out", "x"]) == "build_math"
    assert _command_word(["eval", "m", "--task", "arc"]) == "eval"
