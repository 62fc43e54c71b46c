"""Where a command writes: the one guard and the one staged write every writer uses.

The guard (`check_destination`) refuses, after resolving symlinks and `..`:
- a destination that is one of the inputs;
- a destination that contains an input (replacing it would delete the input);
- a destination that lies inside an input (writing there would change the input);
- an existing non-empty destination without `overwrite`.

The staged write (`staged_dir`, `staged_file`) builds the output under a fresh hidden
name beside the destination and commits it only when it is complete: the old destination
is renamed aside, the new one renamed into place, and only then is the old one deleted.
A failure or an interrupt before that point leaves the previous destination untouched
(an interrupt during the renames rolls them back: solar_jax.interrupts); nothing but the
destination and our own staging names is ever removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from solar_jax import interrupts
from solar_jax.errors import SolarError


def resolved(path: str | Path) -> Path:
    """`path` absolute, with symlinks (of the parts that exist) and `..` resolved."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner != outer and inner.is_relative_to(outer)


def overlap(dst: str | Path, src: str | Path) -> str | None:
    """How `dst` overlaps the input `src` ("is", "contains", "lies inside"), or None."""
    d, s = resolved(dst), resolved(src)
    if d == s:
        return "is"
    if _is_within(s, d):
        return "contains"
    if _is_within(d, s):
        return "lies inside"
    return None


def check_overlap(dst: str | Path, inputs: Iterable[str | Path | None], *,
                  what: str = "destination") -> None:
    """Refuse a `dst` that is, contains or lies inside any of `inputs` (None entries and
    remote URLs are skipped)."""
    for src in inputs:
        if src is None or "://" in str(src):
            continue
        how = overlap(dst, src)
        if how == "is":
            raise SolarError(f"{what} {dst} is the input {src}; choose another path")
        if how == "contains":
            raise SolarError(f"{what} {dst} contains the input {src}; writing it would delete "
                             f"the input; choose another path")
        if how == "lies inside":
            raise SolarError(f"{what} {dst} lies inside the input {src}; writing it would "
                             f"change the input; choose another path")


def check_destination(dst: str | Path, inputs: Iterable[str | Path | None] = (), *,
                      overwrite: bool = False, what: str = "destination") -> None:
    """The guard: no overlap with an input, and no existing non-empty `dst` unless
    `overwrite`."""
    check_overlap(dst, inputs, what=what)
    path = Path(dst)
    if path.exists() and not overwrite:
        if path.is_file() or any(path.iterdir()):
            raise SolarError(f"{what} {dst} exists and is not empty; pass --overwrite to "
                             f"replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fresh_dir(dst: Path) -> Path:
    """A new, uniquely named directory beside `dst`, with the permissions a plain mkdir
    would give (mkdtemp's are owner-only)."""
    stage = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    os.chmod(stage, 0o777 & ~_umask())
    return stage


def _fresh_file(dst: Path) -> Path:
    """A new, uniquely named empty file beside `dst`, with open()'s usual permissions."""
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.partial-", dir=dst.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def commit(stage: Path, dst: Path) -> None:
    """Put the finished `stage` at `dst`, replacing what is there."""
    commit_all([(stage, dst)])


def commit_all(pairs: list[tuple[Path, Path]]) -> None:
    """Put each finished stage at its destination, as one step as far as signals go: a
    signal during the renames undoes all of them (and is raised); one before them is
    raised without touching any destination."""
    interrupts.check()
    interrupts.pause_at("rename")
    interrupts.check()
    done: list[tuple[Path, Path, Path | None]] = []
    with interrupts.deferred():
        try:
            for stage, dst in pairs:
                backup = None
                if dst.exists() or dst.is_symlink():
                    backup = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
                    backup.rmdir()
                    _set_aside(dst, backup, file_over_file=stage.is_file())
                try:
                    os.replace(stage, dst)
                except BaseException:
                    if backup is not None:  # a hard link to the file still at dst, or it
                        os.replace(backup, dst)
                        backup.unlink(missing_ok=True)
                    raise
                done.append((stage, dst, backup))
                interrupts.pause_at("swap")
        except BaseException:
            _undo(done)
            raise
        if interrupts.pending() is not None:
            _undo(done)
        else:
            interrupts.committed()
            for _, _, backup in done:
                if backup is not None:
                    _remove(backup)
    interrupts.check()  # the rolled-back case (or a signal while deleting the old copies)


def _set_aside(dst: Path, backup: Path, *, file_over_file: bool) -> None:
    """Keep the old destination under `backup`. A file about to be replaced by a file is
    hard-linked, so readers always find a complete file at `dst` (os.replace swaps it
    atomically); anything else (or a filesystem without hard links) is renamed aside."""
    if file_over_file and dst.is_file() and not dst.is_symlink():
        try:
            os.link(dst, backup)
            return
        except OSError:
            pass
    os.rename(dst, backup)


def _undo(done) -> None:
    for stage, dst, backup in reversed(done):
        os.rename(dst, stage)
        if backup is not None:
            os.rename(backup, dst)


def _staged(dst: str | Path, fresh) -> Iterator[Path]:
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    stage = fresh(dst)
    try:
        yield stage
        commit(stage, dst)
    except BaseException:
        _remove(stage)
        raise


@contextlib.contextmanager
def staged_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a fresh directory beside `dst`; on success it replaces `dst`, on failure or
    interrupt it vanishes. Call `check_destination` first."""
    yield from _staged(dst, _fresh_dir)


@contextlib.contextmanager
def staged_file(dst: str | Path) -> Iterator[Path]:
    """Yield a fresh file path beside `dst` (not yet created); on success it replaces
    `dst`, on failure or interrupt it vanishes."""
    yield from _staged(dst, _fresh_file)


@contextlib.contextmanager
def staged_files(dsts: list[str | Path]) -> Iterator[list[Path]]:
    """Several files committed together (build-math's two outputs): all of them are
    replaced, or none."""
    dsts = [Path(d).absolute() for d in dsts]
    stages = []
    try:
        for dst in dsts:
            dst.parent.mkdir(parents=True, exist_ok=True)
            stages.append(_fresh_file(dst))
        yield stages
        commit_all(list(zip(stages, dsts)))
    except BaseException:
        for stage in stages:
            _remove(stage)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a staged file (never half a file at `path`)."""
    with staged_file(path) as stage:
        with open(stage, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
