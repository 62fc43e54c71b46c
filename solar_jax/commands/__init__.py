"""CLI subcommands, one module each. A module exposes `register(subparsers)` which adds its
parser and sets `func`; `solar_jax.cli` lists the modules in COMMAND_MODULES."""
