"""solar-jax build-math GSM8K.jsonl OUT_DIR [--seed S] [--limit N] [--overwrite]"""


def register(sub) -> None:
    p = sub.add_parser("build-math", help="GSM8K -> SFT records and math preference pairs")
    p.add_argument("src", metavar="GSM8K.jsonl",
                   help="GSM8K JSONL (question, answer with '#### N')")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="writes sft.jsonl and preference.jsonl here (never over the input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use the first N records")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.data.synth_math import build_math_data

    counts = build_math_data(args.src, args.out_dir, seed=args.seed, limit=args.limit,
                             overwrite=args.overwrite)
    print(f"wrote {counts['sft']} SFT records and {counts['preference']} preference pairs "
          f"to {args.out_dir}")
