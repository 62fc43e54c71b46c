"""A hostile user at the CLI (issue 18), part three: interrupts at every moment of a write.
Real subprocesses (each pays the jax import), stopped at named points through the
SOLAR_JAX_TEST_PAUSE_AT hook so that the signal lands exactly there: the previous
destination or nothing is left, never half a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from hostile_helpers import ckpt, hf, leftovers, tree_digest  # noqa: F401 (fixtures)


# ---- interrupts: real processes, real signals ---------------------------------------------


def _spawn(argv, tmp_path, pause=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOLAR_JAX_COMPILE_CACHE": "off"}
    marker = tmp_path / f"paused-{pause}"
    if pause:
        env.update(SOLAR_JAX_TEST_PAUSE_AT=pause, SOLAR_JAX_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "solar_jax.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def _interrupt_at(argv, tmp_path, pause, sig):
    proc, marker = _spawn(argv, tmp_path, pause)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"never reached {pause}: rc={proc.returncode} {out} {err}")
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("pause,sig,command", [
    ("startup", signal.SIGINT, "convert"),    # before jax is even imported
    ("read", signal.SIGTERM, "convert"),      # a leaf read, nothing staged yet
    ("write", signal.SIGINT, "upscale"),      # the issue's: upscale --to hf mid-write
    ("rename", signal.SIGINT, "merge"),       # complete in staging, not yet committed
    ("swap", signal.SIGTERM, "convert"),      # between the renames: rolled back
    ("write", signal.SIGTERM, "gguf"),        # GGUF export mid-file
])
def test_interrupt_leaves_the_previous_destination_or_nothing(ckpt, tmp_path, pause, sig,
                                                               command):
    out_root = tmp_path / "out"
    out_root.mkdir()
    dst = out_root / ("model.gguf" if command == "gguf" else "dst")
    previous = None
    if command == "convert":  # an existing destination, replaced with --overwrite
        dst.mkdir()
        (dst / "keep.txt").write_text("the previous destination")
        previous = tree_digest(dst)
    argv = {"convert": ["convert", str(ckpt), str(dst), "--to", "hf", "--overwrite"],
            "upscale": ["upscale", str(ckpt), str(dst), "--m", "1", "--to", "hf"],
            "merge": ["merge", str(ckpt), str(ckpt), "--out", str(dst), "--method", "linear"],
            "gguf": ["convert", str(ckpt), str(dst), "--to", "gguf", "--no-tokenizer"]}[command]
    inputs = tree_digest(ckpt)
    rc, out, err = _interrupt_at(argv, tmp_path, pause, sig)
    assert rc == 128 + sig, (rc, out, err)
    assert err.strip() == "interrupted", err
    assert out == ""
    assert tree_digest(ckpt) == inputs
    if previous is not None:
        assert tree_digest(dst) == previous
    else:
        assert not dst.exists()
    assert leftovers(out_root) == []


def test_interrupt_during_imports_is_one_line(ckpt, tmp_path):
    """No pause hook: SIGINT lands wherever start-up is (importing jax, parsing, opening
    the source); the answer is the same single line."""
    proc, _ = _spawn(["convert", str(ckpt), str(tmp_path / "dst")], tmp_path)
    time.sleep(1.5)  # past the interpreter's own start (the handlers go in first thing)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal")
    assert (proc.returncode, err.strip()) == (130, "interrupted"), err
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


# The gc-callback cases run in a subprocess of their own: a signal sent to the test
# process itself would reach pytest's (or an xdist worker's) handlers, and a stray one would
# end whichever test runs next.
GC_CASE = """
import gc, signal, sys, threading, time
from solar_jax import interrupts

started = []
class CountingTimer(threading.Timer):
    def start(self):
        started.append(self)
        super().start()
interrupts.threading.Timer = CountingTimer
calls = int(sys.argv[1])
def callback(phase, info):
    global calls
    if phase == "start" and calls:
        calls -= 1
        interrupts.handler(signal.SIGINT, sys._getframe())  # as if it landed here
interrupts.install()
gc.callbacks.append(callback)
try:
    gc.collect()
    gc.collect()
    gc.callbacks.remove(callback)
    time.sleep(5)  # the re-sent signal interrupts this sleep
    print("not interrupted")
except interrupts.Interrupted as e:
    time.sleep(0.3)  # a second re-send, if any, would land here (and be counted)
    print(e.exit_code, len(started))
"""


@pytest.mark.parametrize("callbacks", [1, 2])
def test_a_signal_inside_a_gc_callback_is_resent_once(callbacks):
    """jax's `_xla_gc_callback` case: an exception raised inside a gc callback is printed
    as "Exception ignored" and lost. The handler defers it and re-sends the signal, once
    even when a second gc callback comes before it arrives (a second re-send would land
    after the first had ended the command)."""
    out = subprocess.run([sys.executable, "-c", GC_CASE, str(callbacks)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["130", "1"], out.stdout + out.stderr
