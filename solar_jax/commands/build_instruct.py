"""solar-jax build-instruct TEXT OUT_DIR [--seed S] [--heldout-chars C] [--overwrite]"""


def register(sub) -> None:
    p = sub.add_parser("build-instruct",
                       help="play text -> instruction, speaker and preference sets (Alpaca/"
                            "OpenOrca stand-ins)")
    p.add_argument("src", metavar="TEXT", nargs="?", default=None,
                   help="text of `NAME:` speeches (default: the shipped tinyshakespeare)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="writes alpaca/openorca/preference[_eval].jsonl, heldout.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-chars", type=int, default=6000,
                   help="the text's tail held out for *_eval.jsonl and heldout.txt")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.data.synth_instruct import build_instruct_data
    from solar_jax.resources import data_file

    src = args.src or data_file("tinyshakespeare.txt")
    counts = build_instruct_data(src, args.out_dir, seed=args.seed,
                                 heldout_chars=args.heldout_chars, overwrite=args.overwrite)
    print(", ".join(f"{n} {name}" for name, n in counts.items()) + f" -> {args.out_dir}")
