"""solar-jax report RUN_DIR [RUN_DIR ...] [--eval-dir DIR] [--format markdown|csv|json] [--out FILE]"""

from pathlib import Path

from solar_jax.destination import write_text_atomic


def register(sub) -> None:
    p = sub.add_parser("report", help="the paper-style table of runs and merges: data, steps, "
                                      "final train loss, held-out perplexity, GSM8K")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="training run directories, merged models or any model folder")
    p.add_argument("--eval-dir", default=None, metavar="DIR",
                   help="also read DIR/<name>/eval_results*.json for each RUN_DIR named <name>")
    # Checked by the API rather than argparse `choices`, so a typo is a one-line error.
    p.add_argument("--format", default="markdown", help="markdown (default), csv or json")
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.report import collect, format_report

    text = format_report(collect(args.runs, args.eval_dir), args.format)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text + "\n")
