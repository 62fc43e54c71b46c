"""solar-jax convert SRC DST [--to solar|hf] [--dtype ...] [--max-shard-size 5GB] [--overwrite]"""


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert between HF folders, GGUF and solar-jax checkpoints")
    p.add_argument("src", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=("solar", "hf"), default="solar", help="output format")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: keep the source's)")
    p.add_argument("--max-shard-size", default="5GB", help="HF output shard size (e.g. 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.api import convert

    out = convert(args.src, args.dst, to=args.to, dtype=args.dtype,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")
