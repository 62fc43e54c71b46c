"""solar-jax ablate CONFIG.yaml [key=value ...]"""


def register(sub) -> None:
    p = sub.add_parser("ablate", help="layer-count ablation of depth up-scaling: which m "
                                      "(or cut points) is best, with layer-similarity diagnostics")
    p.add_argument("config", help="study config YAML (see configs/ablate-smollm2-cpu.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. m=[4,8,12] heal_tokens=0 heal.learning_rate=1e-4")
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.ablate import load_ablate_config, run_ablation

    cfg = load_ablate_config(args.config, args.overrides)
    run_ablation(cfg)
