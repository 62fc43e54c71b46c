"""`solar-jax <command>`: each command parses flags and calls the Python API.

User errors (SolarError) print one line `error: ...` and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import sys

from solar_jax.errors import SolarError


def _cmd_convert(args) -> None:
    from solar_jax.api import convert
    out = convert(args.src, args.dst, to=args.to, dtype=args.dtype,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")


def _cmd_demo(args) -> None:
    from solar_jax.demo import run_demo
    run_demo(out_dir=args.out_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solar-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert between HF folders, GGUF and solar-jax checkpoints")
    p.add_argument("src", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=("solar", "hf"), default="solar", help="output format")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: keep the source's)")
    p.add_argument("--max-shard-size", default="5GB", help="HF output shard size (e.g. 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("demo", help="import SmolLM2-135M-Instruct (GGUF), convert it, chat once")
    p.add_argument("--out-dir", default="demo_out")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SolarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
