"""SIGINT/SIGTERM for commands that write: stop cleanly, never half-commit.

The CLI installs `handler` for both signals before it imports anything heavy. A signal
raises `Interrupted` (a KeyboardInterrupt, so `except KeyboardInterrupt` code keeps
working) where Python can deliver it, and is *deferred* where raising would do harm:

- inside `deferred()` (the commit of a staged output: a few renames), the signal is only
  recorded; `solar_jax.destination` checks it right after the renames and rolls them back, so
  an interrupt during a commit leaves the previous destination;
- inside a garbage-collector callback (jax registers `_xla_gc_callback`): an exception
  raised there is printed as "Exception ignored in ..." and swallowed, and the command
  would go on to finish its output. The signal is recorded and re-sent a moment later,
  when the callback has returned.

`check()` raises for a recorded signal at the safe points (before a commit), so a signal
that was swallowed anyway still stops the write. After the first `Interrupted`, further
signals are only recorded, so the clean-up of a staging directory is not cut short.

Tests: SOLAR_JAX_TEST_PAUSE_AT=<point> with SOLAR_JAX_TEST_PAUSE_FILE=<path> makes
`pause_at(point)` create the file and wait (up to a minute) for a signal, so a test can
interrupt a command at a named moment deterministically. The points: `startup` (before
the command's imports), `read` (a tensor read), `write` (a tensor or file written to the
staging area), `rename` (the output complete, not yet committed) and `swap` (between the
commit's renames).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PAUSE_ENV, PAUSE_FILE_ENV = "SOLAR_JAX_TEST_PAUSE_AT", "SOLAR_JAX_TEST_PAUSE_FILE"


class Interrupted(KeyboardInterrupt):
    """Raised for SIGINT or SIGTERM; `exit_code` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self.raised = False             # Interrupted already raised once
        self.depth = 0                  # nesting of deferred()
        self.finished = False           # the command's output is committed: ignore signals
        self.ignore_after_commit = False
        self.resend_pending = False     # a signal deferred out of a gc callback is on its way
        self.previous: dict = {}


_state = _State()


def _in_gc_callback(frame) -> bool:
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    codes.discard(None)
    while frame is not None and codes:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def handler(signum, frame) -> None:
    if _state.finished:
        return
    if _state.signum is None:
        _state.signum = signum
    if _state.raised or _state.depth:
        return
    if _in_gc_callback(frame):
        # Raising here would be swallowed; deliver it again once the callback is over
        # (once: another gc callback before it arrives must not queue a second one, which
        # would land after the first has ended the command).
        if _state.resend_pending:
            return
        _state.resend_pending = True
        timer = threading.Timer(0.02, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    _state.raised = True
    raise Interrupted(_state.signum)


def install() -> None:
    """Install the handler (main thread only); `restore()` puts the previous ones back."""
    _state.__init__()
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; Python's defaults stay
    for sig in SIGNALS:
        _state.previous[sig] = signal.signal(sig, handler)


def configure(*, ignore_after_commit: bool) -> None:
    """ignore_after_commit: the command writes one output; once it is committed, a signal
    is ignored (the work is done) rather than reported as an interrupt."""
    _state.ignore_after_commit = ignore_after_commit


def quiet() -> None:
    """The command is over: signals until the process exits are ignored. SIG_IGN rather
    than our handler, because interpreter shutdown puts the default handlers back in
    place of Python-level ones, and a signal then would kill a process whose work is
    done (and may print a traceback)."""
    _state.finished = True
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def restore() -> None:
    for sig, previous in _state.previous.items():
        signal.signal(sig, previous)
    _state.previous.clear()


def installed() -> bool:
    return bool(_state.previous)


def pending() -> int | None:
    """The signal received and not yet acted on (None: none)."""
    return None if _state.finished else _state.signum


def check() -> None:
    """Raise Interrupted for a signal that was recorded but not raised (a safe point)."""
    if _state.signum is not None and not _state.finished:
        _state.raised = True
        raise Interrupted(_state.signum)


@contextlib.contextmanager
def deferred():
    """Signals inside are recorded, not raised; the caller checks `pending()` after."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1


def committed() -> None:
    """Called when an output is in place: for a one-output CLI command, later signals are
    ignored, since there is nothing left to interrupt."""
    if _state.ignore_after_commit and installed():
        _state.finished = True


def pause_at(point: str) -> None:
    """Test hook (see the module docstring); a no-op unless the environment asks for it."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(point)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _state.signum is None:
        time.sleep(0.02)
