"""CLI subcommands, one module each. A module exposes `register(subparsers)` which adds its
parser and sets `func`; `solar_jax.cli` lists the modules in COMMAND_MODULES.

Each `run` imports the API it calls inside the function, on purpose: building the parser
imports every command module, and `solar-jax --help`, a usage error or a destination check
should answer before jax, flax and orbax load (seconds). No import circle needs it."""
