"""solar-jax build-math GSM8K.jsonl OUT_DIR [--seed S] [--limit N] [--heldout N] [--overwrite]"""


def register(sub) -> None:
    p = sub.add_parser("build-math", help="GSM8K -> SFT records and math preference pairs")
    p.add_argument("src", metavar="GSM8K.jsonl",
                   help="GSM8K JSONL (question, answer with '#### N')")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="writes sft.jsonl and preference.jsonl here (never over the input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use the first N records")
    p.add_argument("--heldout", type=int, default=0,
                   help="the last N records go to heldout.jsonl (an eval set), not to training")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.data.synth_math import build_math_data

    counts = build_math_data(args.src, args.out_dir, seed=args.seed, limit=args.limit,
                             heldout=args.heldout, overwrite=args.overwrite)
    held = f" and {counts['heldout']} held-out records" if "heldout" in counts else ""
    print(f"wrote {counts['sft']} SFT records, {counts['preference']} preference pairs{held} "
          f"to {args.out_dir}")
