"""`open_source(path)`: whichever ParamSource reads `path`.

Its own module because it knows every format: the sources (HF here, GGUF and solar-jax in
their modules) all build on solar_jax.checkpoint.sources, and this picks among them.
"""

from __future__ import annotations

from pathlib import Path

from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.checkpoint.solar_format import (RunSource, SolarSource, is_run_dir,
                                               is_solar_checkpoint)
from solar_jax.checkpoint.sources import PICKLE_SUFFIXES, HFSource, ParamSource, pickle_message
from solar_jax.errors import SolarError


def open_source(path: str | Path) -> ParamSource:
    """A solar-jax checkpoint dir, a training run dir (its latest checkpoint), a Hugging
    Face folder, or a .gguf file."""
    path = Path(path)
    if not path.exists():
        raise SolarError(f"source {path} does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            return GGUFSource(path)
        if path.suffix in PICKLE_SUFFIXES:
            raise SolarError(pickle_message(path))
        if path.suffix == ".safetensors":
            raise SolarError(f"{path} is a bare safetensors file; pass the folder holding it "
                             f"and its config.json")
        raise SolarError(f"unrecognised source file {path} (expected a .gguf file or a folder)")
    if is_solar_checkpoint(path):
        return SolarSource(path)
    if is_run_dir(path):
        return RunSource(path)
    return HFSource(path)
