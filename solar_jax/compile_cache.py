"""The persistent XLA compilation cache that CLI runs share.

A one-shot `solar-jax generate` or `eval` spends seconds compiling programs that the
previous run already compiled for the same shapes (the CPU decode loop, unrolled over the
layers, takes ~3.5 s for SmolLM2). JAX can keep compiled executables on disk keyed by the program,
the backend and the flags, so later runs load them instead. The CLI turns this on for
every command; the Python API leaves the process's JAX configuration alone unless
`enable()` is called.

Where: $SOLAR_JAX_COMPILE_CACHE if set (`off` disables it), else
$XDG_CACHE_HOME/solar-jax/xla, else ~/.cache/solar-jax/xla.
"""

from __future__ import annotations

import os
from pathlib import Path
from solar_jax.errors import SolarError

ENV = "SOLAR_JAX_COMPILE_CACHE"
DISABLED = ("off", "0", "none", "false")
# Programs that compile faster than this are not worth a disk write and read.
MIN_COMPILE_SECONDS = 1.0


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "solar-jax" / "xla"


def cache_dir() -> Path | None:
    """The directory the CLI would use, or None when the cache is turned off."""
    value = os.environ.get(ENV)
    if value is None:
        return default_dir()
    if value.strip().lower() in DISABLED or not value.strip():
        return None
    return Path(value).expanduser()


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default: `cache_dir()`).
    Returns the directory, or None when turned off. JAX writes entries atomically, so
    concurrent runs may share the directory.

    A directory that cannot be created or written is an error when it was asked for (the
    argument or $SOLAR_JAX_COMPILE_CACHE); the default one is then skipped silently, since
    a read-only home must not stop a command that runs fine without the cache."""
    import jax  # on use: the CLI imports this module before it lets jax load

    explicit = path is not None or os.environ.get(ENV) is not None
    target = Path(path).expanduser() if path is not None else cache_dir()
    if target is None:
        return None
    try:
        target.mkdir(parents=True, exist_ok=True)
        usable = os.access(target, os.W_OK)
    except OSError:
        usable = False
    if not usable:
        if explicit:
            raise SolarError(f"compilation cache directory {target} is not writable "
                             f"(set {ENV}=off to run without it)")
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return target
