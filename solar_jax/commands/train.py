"""solar-jax train CONFIG.yaml [key=value ...]"""


def register(sub) -> None:
    p = sub.add_parser("train", help="continued pretraining (sharded, resumable, multi-host)")
    p.add_argument("config", help="run config YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. steps=100 data.path=corpus.txt mesh.fsdp=8")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.train import load_train_config, train

    cfg = load_train_config(args.config, args.overrides)
    record = train(cfg)
    if record:
        print(f"step {record['step']}: loss {record['loss']:.4f}")
