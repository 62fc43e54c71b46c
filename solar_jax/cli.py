"""`solar-jax <command>`: each command parses flags and calls the Python API.

User errors (SolarError) print one line `error: ...` and exit 2 (1 for `compile`'s
"does not fit"); anything else is a bug
and keeps its traceback. Compiled programs are kept on disk between runs
(solar_jax.compile_cache; SOLAR_JAX_COMPILE_CACHE=off turns that off).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from solar_jax import compile_cache
from solar_jax.errors import SolarError

COMMAND_MODULES = ("convert", "upscale", "merge", "train", "build_math", "generate", "chat",
                   "eval", "ablate", "demo", "compile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solar-jax",
                                     description="SOLAR's recipe in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"solar_jax.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        compile_cache.enable()
        args.func(args)
    except SolarError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
