"""solar-jax demo: SOLAR's recipe at CPU scale on the real SmolLM2-135M-Instruct (see
solar_jax/demo.py); --quick only imports the GGUF and chats."""


def register(sub) -> None:
    p = sub.add_parser("demo", help="the SOLAR pipeline on SmolLM2-135M (CPU): DUS, pretrain, SFT, merge, DPO")
    p.add_argument("--out-dir", default="demo_out")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--quick", action="store_true",
                   help="only import, convert and chat (skip the training pipeline)")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.demo import run_demo

    run_demo(out_dir=args.out_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
             quick=args.quick)
