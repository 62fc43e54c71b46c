"""Files the package reads at run time: model presets, the demo's stage configs and the
data the demo and the tests use (tinyshakespeare, GSM8K train).

They are package data, found through the package with importlib.resources, so an installed
wheel works from any directory; nothing here depends on the repository's layout. See
`data/README.md` for where the data comes from and under which licenses.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from solar_jax.errors import SolarError

DATA_FILES = ("tinyshakespeare.txt", "gsm8k_train.jsonl")


def _root() -> Path:
    # A wheel is installed unpacked (no zip import), so the traversable is a real folder.
    return Path(str(resources.files(__name__)))


def resource_path(*parts: str) -> Path:
    """Path of a shipped file, e.g. resource_path("demo", "pretrain.yaml")."""
    path = _root().joinpath(*parts)
    if not path.exists():
        raise SolarError(f"package data {'/'.join(parts)} is missing from the solar_jax install")
    return path


def presets_dir() -> Path:
    return resource_path("presets")


def demo_config(name: str) -> Path:
    return resource_path("demo", name)


def data_file(name: str) -> Path:
    """One of DATA_FILES, as shipped."""
    if name not in DATA_FILES:
        raise SolarError(f"no shipped data file {name!r}; shipped: {', '.join(DATA_FILES)}")
    return resource_path("data", name)
