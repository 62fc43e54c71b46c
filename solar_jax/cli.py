"""`solar-jax <command>`: each command parses flags and calls the Python API.

Every usage mistake and every user error (SolarError) is one line `error: ...` on stderr
and exit status 2 (1 for `compile`'s "does not fit"); anything else is a bug and keeps its
traceback. Warnings (a flag with no effect, a value clamped) are one line `warning: ...`.
SIGINT/SIGTERM print the single line `interrupted` and exit 130/143, with any output staged
so far removed (solar_jax.interrupts, solar_jax.destination); `train` instead checkpoints
and exits 0. Compiled programs are kept on disk between runs (solar_jax.compile_cache;
SOLAR_JAX_COMPILE_CACHE=off turns that off).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from solar_jax import interrupts  # stdlib only: cheap to import before the handlers go in

COMMAND_MODULES = ("convert", "upscale", "merge", "train", "build_math", "build_instruct",
                   "generate", "chat", "eval", "ablate", "demo", "report", "compile")
# Streaming numpy/tensorstore work: no jax import for the compile cache, and no huge-page
# restart (a whole-process A/B of `convert --to hf` came out even, benchmarks/convert_ab.py).
STREAMING_COMMANDS = frozenset({"convert", "upscale", "merge"})


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line naming the command (argparse
    prints the usage and the message on separate lines); subparsers inherit the class."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="solar-jax", description="SOLAR's recipe in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"solar_jax.commands.{name}").register(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser | None = None,
                ) -> dict[str, argparse.ArgumentParser]:
    """Every registered subcommand's parser by name (the README drift test reads these)."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from solar_jax.errors import SolarWarning
    if issubclass(category, SolarWarning):
        print(f"warning: {message}", file=sys.stderr, flush=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _exit_without_collecting() -> None:
    """Let the console command's process end without the cyclic garbage collector walking
    every object of jax, flax and transformers: their module teardown took 0.4-0.7 s of each
    command's wall time (after the output was complete), and ~0.1 s with the collector off.
    Refcounting, atexit handlers and file closing still run; only cycles are left to the
    operating system, which reclaims the whole process anyway."""
    import gc

    gc.disable()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    # The handlers go in before the command imports jax: an interrupt during start-up is
    # then the same one line as any other. The console script (argv None) keeps them
    # until the process exits; an in-process call gets the previous handlers back.
    interrupts.install()
    # transformers announces on import that PyTorch is missing; solar-jax never needs torch,
    # so on a runtime install every command would open with that line. It is advisory only.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _run(argv)
    finally:
        warnings.showwarning = previous_showwarning
        if argv is None:
            interrupts.quiet()
            _exit_without_collecting()
        else:
            interrupts.restore()


_COMPILING = frozenset(COMMAND_MODULES) - STREAMING_COMMANDS


def _command_word(args: list[str]) -> str | None:
    """The module name of the subcommand a command line names (its first word that is not
    an option; `build-math` is solar_jax.commands.build_math)."""
    word = next((a for a in args if not a.startswith("-")), None)
    return word.replace("-", "_") if word else None


def _run(argv) -> int:
    from solar_jax.errors import SolarError

    try:
        interrupts.pause_at("startup")
        if argv is None and _command_word(sys.argv[1:]) in _COMPILING:
            # the console command: huge pages for XLA's buffers. Decided from the command
            # word, before the parser imports every command module (~1.1 s), so the
            # restart costs a bare interpreter start.
            from solar_jax import hugepages
            hugepages.reexec()
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage mistake (2, its line printed)
            return e.code if isinstance(e.code, int) else 2
        interrupts.configure(ignore_after_commit=getattr(args, "one_output", False))
        if args.command not in STREAMING_COMMANDS:  # the cache's set-up imports jax (~2 s)
            from solar_jax import compile_cache
            compile_cache.enable()
        args.func(args)
        interrupts.check()  # a signal some library swallowed still ends in `interrupted`
    except SolarError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr, flush=True)
        return e.exit_code if isinstance(e, interrupts.Interrupted) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
