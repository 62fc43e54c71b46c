"""solar-jax generate MODEL --prompt TEXT [--prompt TEXT ...] [--chat] [--max-new-tokens N]
[--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop STR ...]

One prompt streams its tokens to the terminal as they are decoded; several prompts run as
one padded batch and print in order.
"""

from __future__ import annotations

import sys


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed (default: a fresh random one, printed so the run can "
                        "be repeated; greedy decoding needs none)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when the text contains STR (repeatable)")


def add_model_args(p) -> None:
    p.add_argument("model", help="HF folder, solar-jax checkpoint, or .gguf file")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="parameter/compute dtype (default: the checkpoint's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    add_mesh_arg(p)


def add_mesh_arg(p) -> None:
    p.add_argument("--mesh", default=None, metavar="AXIS=N[,AXIS=N]",
                   help="shard the weights over all devices, e.g. tensor=8 or "
                        "fsdp=2,tensor=4: the train config's mesh axes, unnamed ones 1, "
                        "one may be -1 (default: one device)")


def load(args):
    """The model and its tokenizer from the command's arguments."""
    from solar_jax.api import load_model
    from solar_jax.tokenizer import load_tokenizer

    model = load_model(args.model, args.dtype, mesh=args.mesh)
    model.tokenizer = load_tokenizer(args.tokenizer or args.model)
    return model, model.tokenizer


def sampling(args) -> dict:
    """The sampling keyword arguments; draws (and prints) a seed when sampling without one,
    and warns about sampling flags that greedy decoding ignores."""
    from solar_jax.errors import warn

    seed = args.seed
    if args.temperature > 0 and seed is None:
        import secrets
        seed = secrets.randbelow(2**31)
        print(f"seed: {seed} (pass --seed {seed} to repeat this run)", file=sys.stderr)
    elif args.temperature == 0:
        ignored = [flag for flag, given in (("--top-k", args.top_k != 0),
                                            ("--top-p", args.top_p != 1.0),
                                            ("--seed", seed is not None)) if given]
        if ignored:
            warn(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect "
                 f"with greedy decoding (--temperature 0)")
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                seed=seed or 0, stop=tuple(args.stop))


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue prompts with a KV cache (streams one prompt)")
    add_model_args(p)
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="prompt text (repeat for a batch)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat only)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.generate import Sampler, end_token_ids, generate
    from solar_jax.tokenizer import chat_prompt

    Sampler(args.temperature, args.top_k, args.top_p)  # bad flags fail before loading
    if args.system is not None and not args.chat:
        from solar_jax.errors import warn
        warn("--system has no effect without --chat (a plain prompt has no system message)")
    options = sampling(args)
    model, tokenizer = load(args)
    prompts = [chat_prompt(tokenizer, p, args.system) if args.chat else tokenizer.encode(p)
               for p in args.prompt]
    stream = len(prompts) == 1

    def on_text(_row: int, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    outs = generate(model, prompts, args.max_new_tokens, tokenizer=tokenizer,
                    end_ids=end_token_ids(model, tokenizer), on_text=on_text if stream else None,
                    **options)
    if stream:
        print()
        return
    for i, out in enumerate(outs):
        print(f"--- [{i}] {args.prompt[i]}\n{out.text}")
