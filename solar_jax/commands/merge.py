"""solar-jax merge MODEL [MODEL ...] --out DST --method METHOD [--base BASE]
[--weights W ...] [--t T] [--density D ...] [--lambda L] [--normalize/--no-normalize] ...
[--recipe RECIPE.yaml] [--to solar|hf|gguf] [--quant TYPE] [--dtype ...] [--overwrite]

The methods and their flags come from the registry (solar_jax.merge_methods)."""

import argparse

from solar_jax.commands.merge_flags import add_method_flags, method_parameters, methods_epilog
from solar_jax.commands.output_flags import add_output_flags


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge models: linear, slerp, task arithmetic, TIES, "
                                     "Model Stock (or a mergekit recipe)",
                       epilog=methods_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="HF folders, solar-jax checkpoints or .gguf files")
    p.add_argument("--out", required=True, metavar="DST",
                   help="output directory (a .gguf file for --to gguf)")
    add_method_flags(p)
    p.add_argument("--recipe", default=None,
                   help="mergekit YAML (any method above) instead of the flags")
    add_output_flags(p)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: the recipe's, else the first model's); "
                        "arithmetic is always fp32")
    p.add_argument("--max-shard-size", default=None,
                   help="HF output shard size (default 5GB; --to hf only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty DST (once the new one is complete)")
    # a streaming command (solar_jax.cli.STREAMING_COMMANDS): no compile cache, no jax
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.commands.flag_checks import shard_size
    from solar_jax.merge import merge_checkpoints

    out = merge_checkpoints(args.models, args.out, method=args.method, base=args.base,
                            parameters=method_parameters(args), quant=args.quant,
                            tokenizer=args.tokenizer,
                            recipe=args.recipe, to=args.to, dtype=args.dtype,
                            max_shard_size=shard_size(args, hf=args.to == "hf"),
                            overwrite=args.overwrite)
    print(f"wrote merged {args.to} checkpoint to {out}")
