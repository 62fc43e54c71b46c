"""Warnings for flags that have no effect in the combination given (shared by commands)."""

from __future__ import annotations

from solar_jax.errors import warn

DEFAULT_SHARD_SIZE = "5GB"


def shard_size(args, *, hf: bool) -> str:
    """--max-shard-size, which only HF output uses; warns when given for another format."""
    if args.max_shard_size is not None and not hf:
        warn(f"--max-shard-size has no effect with --to {args.to} (HF output only)")
    return args.max_shard_size or DEFAULT_SHARD_SIZE
