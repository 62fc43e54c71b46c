"""solar-jax eval MODEL --task TASK --data FILE [--limit N] [--num-fewshot K]
[--batch-size B] [--mesh tensor=N] [--out results.json]"""

from __future__ import annotations

import json
from pathlib import Path

from solar_jax.commands.generate import add_mesh_arg
from solar_jax.destination import check_overlap, write_text_atomic
from solar_jax.errors import SolarError
from solar_jax.eval.tasks import TASKS


def register(sub) -> None:
    p = sub.add_parser("eval", help="benchmark a model (lm-evaluation-harness definitions)")
    p.add_argument("model", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--data", required=True, help="the task's data file (JSONL, CSV or text)")
    p.add_argument("--fewshot-data", default=None,
                   help="draw few-shot examples from this file (default: --data, "
                        "never the question itself; mmlu: the *_dev.csv beside it)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate the first N records only (few-shot examples are still "
                        "drawn from the whole file, as lm-eval)")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="few-shot examples (default: lm-eval's, 5 for gsm8k, else 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=None,
                   help="context length in tokens (default: the model's)")
    p.add_argument("--max-gen-tokens", type=int, default=None,
                   help="gsm8k answer length (default 256)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    p.add_argument("--out", default=None,
                   help="write the results JSON (with every question); never an input")
    add_mesh_arg(p)
    p.set_defaults(func=run, one_output=True)


def run(args) -> None:
    from solar_jax.api import load_model
    from solar_jax.eval import evaluate, format_table
    from solar_jax.eval.tasks import task_spec
    from solar_jax.tokenizer import load_tokenizer

    spec = task_spec(args.task)  # an unknown task fails before the model loads
    _warn_unused_flags(args, spec)
    if not Path(args.data).is_file():
        raise SolarError(f"data file {args.data} does not exist")
    if args.out:
        check_overlap(args.out, [args.model, args.data, args.fewshot_data, args.tokenizer],
                      what="--out")
        if Path(args.out).is_dir():
            raise SolarError(f"--out {args.out} is a directory; give a file name")
    model = load_model(args.model, args.dtype, mesh=args.mesh)
    model.tokenizer = load_tokenizer(args.tokenizer or args.model)
    results = evaluate(model, args.task, args.data, limit=args.limit,
                       num_fewshot=args.num_fewshot, fewshot_data=args.fewshot_data,
                       batch_size=args.batch_size, max_length=args.max_length,
                       max_gen_tokens=args.max_gen_tokens or 256, progress=True)
    results["model"] = str(args.model)
    print(format_table(results))
    print(f"{results['n']} documents in {results['seconds']:.1f}s")
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


def _warn_unused_flags(args, spec) -> None:
    from solar_jax.errors import warn

    if args.max_gen_tokens is not None and spec.kind != "gen":
        warn(f"--max-gen-tokens has no effect on {spec.name} (generation tasks only)")
    if spec.kind == "perplexity":
        for flag, value in (("--num-fewshot", args.num_fewshot),
                            ("--fewshot-data", args.fewshot_data)):
            if value is not None:
                warn(f"{flag} has no effect on perplexity")
    elif args.fewshot_data is not None and args.num_fewshot == 0:
        warn("--fewshot-data has no effect with --num-fewshot 0")
