"""solar-jax merge MODEL [MODEL ...] --out DST --method linear|slerp|task_arithmetic
[--weights W ...] [--normalize/--no-normalize] [--t T] [--base BASE] [--to solar|hf]
[--recipe RECIPE.yaml] [--dtype ...] [--max-shard-size 5GB] [--overwrite]"""

import argparse


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge models: linear average, slerp or task arithmetic "
                                     "(or a mergekit recipe)")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="HF folders, solar-jax checkpoints or .gguf files")
    p.add_argument("--out", required=True, metavar="DST", help="output directory")
    # Checked by the API rather than argparse `choices`, so a typo is a one-line error.
    p.add_argument("--method", default=None, help="linear, slerp or task_arithmetic")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per MODEL (linear: default equal; task_arithmetic: "
                        "lambda_i, default 1)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="divide by the sum of the weights (default: on for linear, off for "
                        "task_arithmetic, as mergekit)")
    p.add_argument("--t", type=float, default=None,
                   help="slerp: interpolation factor toward the second model, in [0, 1]")
    p.add_argument("--base", default=None,
                   help="task_arithmetic: the base model; slerp: the t=0 end (default: the "
                        "first MODEL)")
    p.add_argument("--recipe", default=None,
                   help="mergekit YAML (linear, slerp or task_arithmetic) instead of the flags")
    p.add_argument("--to", choices=("solar", "hf"), default="solar", help="output format")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: the recipe's, else the first model's); "
                        "arithmetic is always fp32")
    p.add_argument("--max-shard-size", default=None,
                   help="HF output shard size (default 5GB; --to hf only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty DST (once the new one is complete)")
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.commands.flag_checks import shard_size
    from solar_jax.merge import merge_checkpoints

    out = merge_checkpoints(args.models, args.out, method=args.method, weights=args.weights,
                            t=args.t, base=args.base, normalize=args.normalize,
                            recipe=args.recipe, to=args.to, dtype=args.dtype,
                            max_shard_size=shard_size(args, hf=args.to == "hf"),
                            overwrite=args.overwrite)
    print(f"wrote merged {args.to} checkpoint to {out}")
