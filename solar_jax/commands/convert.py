"""solar-jax convert SRC DST [--to solar|hf|gguf] [--dtype ...] [--max-shard-size 5GB] [--overwrite]
                        [--quant f16|bf16|f32|q8_0|q4_0] [--no-tokenizer]"""


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert between HF folders, GGUF and solar-jax checkpoints")
    p.add_argument("src", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("dst", help="output directory (a .gguf file for --to gguf)")
    p.add_argument("--to", choices=("solar", "hf", "gguf"), default="solar", help="output format")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="output weight dtype (default: keep the source's)")
    p.add_argument("--max-shard-size", default=None,
                   help="HF output shard size (default 5GB; --to hf only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty DST (once the new one is complete)")
    # No argparse `choices`: a bad value is a one-line SolarError (exit 2) like other bad input.
    p.add_argument("--quant", default=None, metavar="TYPE",
                   help="GGUF tensor type: f16 (default), bf16, f32, q8_0, q4_0; norms stay f32")
    p.add_argument("--no-tokenizer", dest="tokenizer", action="store_false",
                   help="GGUF: write the weights without a vocabulary (the source has none)")
    # a streaming command (solar_jax.cli.STREAMING_COMMANDS): no compile cache, no jax
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.checkpoint.output import convert  # no jax import: see its docstring
    from solar_jax.commands.flag_checks import shard_size

    out = convert(args.src, args.dst, to=args.to, dtype=args.dtype,
                  max_shard_size=shard_size(args, hf=args.to == "hf"), overwrite=args.overwrite,
                  quant=args.quant, tokenizer=args.tokenizer)
    print(f"wrote {args.to} checkpoint to {out}")
