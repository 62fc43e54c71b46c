"""solar-jax demo: the real SmolLM2-135M-Instruct GGUF -> solar-jax -> a greedy chat answer."""


def register(sub) -> None:
    p = sub.add_parser("demo", help="import SmolLM2-135M-Instruct (GGUF), convert it, chat once")
    p.add_argument("--out-dir", default="demo_out")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.demo import run_demo

    run_demo(out_dir=args.out_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
