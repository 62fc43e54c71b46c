"""solar-jax upscale SRC DST (--m M | --recipe RECIPE.yaml) [--to solar|hf|gguf] [--quant TYPE]
[--dtype ...] [--max-shard-size 5GB] [--overwrite]"""

from solar_jax.commands.output_flags import add_output_flags


def register(sub) -> None:
    p = sub.add_parser("upscale", help="depth up-scaling: SOLAR's recipe (--m) or a mergekit "
                                       "passthrough recipe")
    p.add_argument("src", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("dst", help="output directory (a .gguf file for --to gguf)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--m", type=int, default=None,
                     help="SOLAR recipe: layers [0, n-m) then [m, n), 2(n-m) layers "
                          "(n=32, m=8 -> 48 as SOLAR 10.7B)")
    how.add_argument("--recipe", default=None,
                     help="mergekit YAML with merge_method: passthrough; SRC is the model "
                          "of slices that name none")
    add_output_flags(p)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: the recipe's, else keep the source's)")
    p.add_argument("--max-shard-size", default=None,
                   help="HF output shard size (default 5GB; --to hf only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty DST (once the new one is complete)")
    # a streaming command (solar_jax.cli.STREAMING_COMMANDS): no compile cache, no jax
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.commands.flag_checks import shard_size
    from solar_jax.dus import upscale_checkpoint

    out = upscale_checkpoint(args.src, args.dst, m=args.m, recipe=args.recipe, to=args.to,
                             quant=args.quant, tokenizer=args.tokenizer, dtype=args.dtype,
                             max_shard_size=shard_size(args, hf=args.to == "hf"),
                             overwrite=args.overwrite)
    print(f"wrote up-scaled {args.to} checkpoint to {out}")
