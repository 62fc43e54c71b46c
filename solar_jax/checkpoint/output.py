"""Every output format in one place: a ParamSource -> a solar-jax checkpoint, an HF folder
or a .gguf file. `convert`, `save_model`, `upscale` and `merge` all write through
`write_source`, so each command offers the same formats with the same checks."""

from __future__ import annotations

from pathlib import Path

from solar_jax.checkpoint.gguf_writer import check_quant, write_gguf
from solar_jax.checkpoint.sources import ParamSource
from solar_jax.checkpoint.writers import write_hf, write_solar
from solar_jax.config import canonical_dtype
from solar_jax.errors import SolarError

FORMATS = ("solar", "hf", "gguf")


def check_output(to: str, dst, *, dtype: str | None = None, quant: str | None = None,
                 tokenizer: bool = True) -> None:
    """The format and its options, checked before anything is read."""
    if to not in FORMATS:
        raise SolarError(f"unknown output format {to!r}; use one of {', '.join(FORMATS)}")
    if dtype is not None:
        canonical_dtype(dtype)
    if to != "gguf" and Path(dst).suffix == ".gguf":
        raise SolarError(f"{dst} names a .gguf file; pass --to gguf to write GGUF")
    check_gguf_options(to, dtype, quant, tokenizer)


def check_gguf_options(to: str, dtype, quant, tokenizer) -> None:
    if to == "gguf":
        check_quant(quant)
        if dtype is not None:
            raise SolarError("--dtype does not apply to GGUF output; choose its encoding "
                             "with --quant")
    elif quant is not None or not tokenizer:
        raise SolarError("--quant and --no-tokenizer apply to --to gguf only")


def write_source(source: ParamSource, dst, *, to: str = "solar", dtype: str | None = None,
                 max_shard_size: str | int = "5GB", overwrite: bool = False,
                 quant: str | None = None, tokenizer: bool = True,
                 name: str | None = None) -> Path:
    """Stream `source` to DST in format `to`; `name` is GGUF's general.name (default: the
    source's folder or file name)."""
    check_output(to, dst, dtype=dtype, quant=quant, tokenizer=tokenizer)
    if to == "gguf":
        return write_gguf(source, dst, quant=quant, tokenizer=tokenizer, overwrite=overwrite,
                          name=name)
    if to == "solar":
        return write_solar(source, dst, dtype=dtype, overwrite=overwrite)
    return write_hf(source, dst, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite)


def convert(src, dst, *, to: str = "solar", dtype: str | None = None,
            max_shard_size: str | int = "5GB", overwrite: bool = False,
            quant: str | None = None, tokenizer: bool = True) -> Path:
    """Stream SRC into DST in format `to`: the body of solar_jax.convert. It imports no jax,
    so `solar-jax convert` calls it directly: the API module's jax import is ~2 s of a
    conversion process (benchmarks/RESULTS.md)."""
    from solar_jax.checkpoint.opener import open_source
    from solar_jax.destination import check_destination

    if to not in FORMATS:  # before the destination check, so a bad --to wins over a bad DST
        raise SolarError(f"unknown output format {to!r}; use one of {', '.join(FORMATS)}")
    if dtype is not None:
        canonical_dtype(dtype)
    src, dst = Path(src), Path(dst)
    check_destination(dst, [src], overwrite=overwrite)  # before a byte is read
    check_output(to, dst, dtype=dtype, quant=quant, tokenizer=tokenizer)
    return write_source(open_source(src), dst, to=to, dtype=dtype, max_shard_size=max_shard_size,
                        overwrite=overwrite, quant=quant, tokenizer=tokenizer)
