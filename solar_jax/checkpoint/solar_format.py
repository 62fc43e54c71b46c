"""The solar-jax checkpoint: an orbax directory holding the params pytree, plus its config.

    DST/solar_config.json   {"format": "solar-jax", "version": 1, "layout": "scanned",
                             "num_layers": L, "config": {...ModelConfig...}}
    DST/params/             orbax checkpoint of the params pytree (layers stacked on axis 0)
    DST/tokenizer.json ...  tokenizer and generation config, copied from the source

Params are written one leaf at a time in orbax's layout by tensorstore (orbax_layout; orbax's
partial save where leaves are chunked by layer), so a conversion holds one stacked leaf at a
time; the finished directory is a normal orbax checkpoint that `orbax.checkpoint` restores
whole or leaf by leaf, and it is read back with tensorstore where orbax_layout recognises it. Where a checkpoint stores its stacked
leaves one layer per chunk (orbax's storage sharding along axis 0; LeafWriter.layer_chunks),
a reader that wants one layer (the HF writer, a merge) reads just that chunk through
tensorstore instead of the whole leaf; other checkpoints are read leaf by leaf. The layout is stored so that loading a
checkpoint into a model of another layout fails with a message, not a shape error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorstore as ts

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.checkpoint.orbax_layout import DirectLeafWriter, open_leaves
from solar_jax.checkpoint.sources import TOKENIZER_FILES, ParamSource
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.orbax_util import quiet_orbax as _quiet
from solar_jax.tree_paths import get_leaf, leaf_name, set_leaf

CONFIG_FILE = "solar_config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1
LAYOUT = "scanned"


def _ocp():
    # deferred: orbax takes seconds to import, and HF/GGUF conversions never need it
    import orbax.checkpoint as ocp
    return ocp


def is_solar_checkpoint(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def write_config(dst: Path, config: ModelConfig) -> None:
    meta = {"format": "solar-jax", "version": FORMAT_VERSION, "layout": LAYOUT,
            "num_layers": config.num_layers, "config": config.to_dict()}
    (dst / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


class LeafWriter:
    """Adds leaves to an orbax checkpoint at dst/params one at a time."""

    # Stacked leaves one layer per chunk? Off: orbax writes each chunk as its own shard,
    # which took 2.6x the save time and ~1.5 leaves of extra memory (a 200 MB leaf, 2 CPUs;
    # benchmarks/RESULTS.md, 2026-12-02), so writing would cost more than per-layer reading
    # saves. Readers handle both layouts.
    layer_chunks = False

    def __init__(self, dst: Path):
        self._path = Path(dst) / PARAMS_DIR
        self._written = 0
        # orbax's layout written with tensorstore (orbax_layout): same bytes, same metadata,
        # without importing orbax and jax; orbax's partial save where a leaf is chunked by layer
        self._direct = None if self.layer_chunks else DirectLeafWriter(self._path)

    def add(self, path: tuple[str, ...], array: np.ndarray) -> None:
        if self._direct is not None:
            self._direct.add(path, np.asarray(array))
            self._written += 1
            return
        from orbax.checkpoint.experimental import v1 as ocp1
        from orbax.checkpoint.experimental.v1 import partial

        tree: dict = {}
        set_leaf(tree, path, np.asarray(array))
        # The save is synchronous and nobody mutates the array meanwhile, so orbax's defensive
        # host copy is pure overhead; zstd over one leaf-sized chunk costs ~0.8x the leaf in
        # scratch memory and 3x the time (benchmarks/RESULTS.md, convert_memory).
        context = ocp1.Context()
        context.memory.deepcopy_host_arrays = False
        context.array.saving.use_compression = False
        if self.layer_chunks and path[0] == "layers":  # one chunk per layer: see the module docstring
            context.array.saving.storage_options = \
                ocp1.options.ArrayOptions.Saving.StorageOptions(shard_axes=(0,))
        with context, _quiet():
            partial.save(self._path, tree)
        self._written += 1

    def finish(self) -> None:
        if not self._written:
            raise SolarError("internal: no parameters were written")
        if self._direct is not None:
            self._direct.finish()
            return
        from orbax.checkpoint.experimental.v1 import partial
        with _quiet():
            partial.finalize(self._path)


class SolarSource(ParamSource):
    def __init__(self, path: Path):
        self.location = Path(path).absolute()
        try:
            meta = json.loads((self.location / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise SolarError(f"{self.location / CONFIG_FILE} is not valid JSON: {e}") from None
        if meta.get("format") != "solar-jax":
            raise SolarError(f"{self.location} is not a solar-jax checkpoint")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise SolarError(f"{self.location} was written by a newer solar-jax "
                             f"(format {meta.get('version')}); upgrade solar-jax")
        if meta.get("layout") != LAYOUT:
            raise SolarError(f"{self.location} stores layers in layout {meta.get('layout')!r}; "
                             f"this solar-jax reads {LAYOUT!r} (stacked) checkpoints only")
        self._setup(ModelConfig.from_dict(meta["config"]), self.location / PARAMS_DIR / "state",
                    ())
        self._extras_dir = self.location

    def _setup(self, config: ModelConfig, params_dir: Path, prefix: tuple[str, ...]) -> None:
        self.config = config
        self._params = params_dir
        self._prefix = prefix  # where the params tree sits inside the orbax tree
        if not self._params.is_dir():
            raise SolarError(f"{self.location} has no finished parameter checkpoint")
        # every leaf opened with tensorstore where the layout is orbax's zarr3 + OCDBT (no orbax
        # or jax import: orbax_layout); orbax reads anything else
        self._stores = open_leaves(self._params, prefix)
        self._specs = self._store_specs() if self._stores else self._read_specs()
        self._check_shapes()
        self._layer_stores = self._open_layer_stores()
        self.layer_reads = self._layer_stores is not None

    def _store_specs(self) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
        return {path: (tuple(store.shape), np.dtype(store.dtype.numpy_dtype))
                for path, store in self._stores.items()}

    def _open_layer_stores(self) -> dict | None:
        """Every stacked leaf opened as a tensorstore array when each is chunked one layer
        per chunk; None where any is not (or the layout is not orbax's zarr3 in OCDBT)."""
        stores = {}
        for rule in hf_names.rules_for(self.config):
            if not rule.stacked:
                continue
            if self._stores:
                store = self._stores.get(rule.path)
                if store is None or store.chunk_layout.read_chunk.shape[0] != 1:
                    return None
                stores[rule.path] = store
                continue
            spec = {"driver": "zarr3", "kvstore": {
                "driver": "ocdbt", "base": f"file://{self._params}",
                "path": ".".join((*self._prefix, *rule.path))}}
            try:
                store = ts.open(spec, open=True, read=True).result()
            except ValueError:  # not the layout we wrote: fall back to orbax, leaf by leaf
                return None
            if store.chunk_layout.read_chunk.shape[0] != 1 or \
                    tuple(store.shape) != self._specs[rule.path][0]:
                return None
            stores[rule.path] = store
        return stores

    def _read_specs(self) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
        ocp = _ocp()
        try:
            with _quiet():
                tree = ocp.PyTreeCheckpointer().metadata(self._params).item_metadata.tree
        except Exception as e:  # orbax raises many types for a damaged directory
            raise SolarError(f"cannot read {self._params}: {str(e).splitlines()[0]}") from None
        specs = {}

        def visit(node, prefix):
            if isinstance(node, dict):
                for key, value in node.items():
                    visit(value, (*prefix, key))
            else:
                specs[prefix] = (tuple(node.shape), np.dtype(node.dtype))
        for key in self._prefix:
            tree = tree.get(key, {}) if isinstance(tree, dict) else {}
        visit(tree, ())
        return specs

    def _check_shapes(self) -> None:
        # from the family's parameter table, as the HF and GGUF sources check theirs: no
        # model (jax) is needed to read a checkpoint
        for rule in hf_names.rules_for(self.config):
            want = tuple(rule.shape(self.config))
            if rule.stacked:
                want = (self.config.num_layers, *want)
            if rule.path not in self._specs:
                raise SolarError(f"{self.location}: parameter {leaf_name(rule.path)} is missing")
            got = self._specs[rule.path][0]
            if got != want:
                hint = (" (an unstacked checkpoint? solar-jax stacks layers on axis 0)"
                        if rule.stacked and len(got) == len(want) - 1 else "")
                raise SolarError(f"{self.location}: parameter {leaf_name(rule.path)} has "
                                 f"shape {list(got)}, expected {list(want)}{hint}")

    def leaf_spec(self, path):
        return self._specs[tuple(path)]

    def read_leaf(self, path, layers=None):
        path = tuple(path)
        if layers is not None and self._layer_stores and path in self._layer_stores:
            store = self._layer_stores[path]
            shape, dtype = self._specs[path]
            layers = list(layers)
            out = np.empty((len(layers), *shape[1:]), dtype)
            for slot, layer in enumerate(layers):
                out[slot] = store[int(layer)].read().result()
            return out
        if self._stores and path in self._stores:
            array = self._stores[path].read().result()
            return array if layers is None else array[np.asarray(layers)]
        ocp = _ocp()
        item: dict = {}
        args: dict = {}
        full = (*self._prefix, *path)
        set_leaf(item, full, 0)
        set_leaf(args, full, ocp.RestoreArgs(restore_type=np.ndarray))
        with _quiet():
            tree = ocp.PyTreeCheckpointer().restore(
                self._params, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                          partial_restore=True))
        array = np.asarray(get_leaf(tree, full))
        if layers is not None:
            array = array[np.asarray(layers)]
        return array

    def copy_extras(self, dst: Path) -> None:
        if self._extras_dir is None:
            return
        if self._extras_dir.is_file():  # a GGUF the run started from
            GGUFSource(self._extras_dir).copy_extras(dst)
            return
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (self._extras_dir / name).is_file():
                shutil.copy2(self._extras_dir / name, dst / name)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "checkpoints").is_dir() and not is_solar_checkpoint(path)


class RunSource(SolarSource):
    """The params of a training run's latest checkpoint (run_dir/checkpoints/<step>), so a
    run directory can be loaded, converted, merged or trained further like a checkpoint."""

    def __init__(self, path: Path):
        self.location = Path(path).absolute()
        steps = sorted(int(p.name) for p in (self.location / "checkpoints").iterdir()
                       if p.name.isdigit() and (p / "run").is_dir())
        if not steps:
            raise SolarError(f"run directory {self.location} has no finished checkpoint")
        self.step = steps[-1]
        ckpt = self.location / "checkpoints" / str(self.step)
        run = _read_run_record(ckpt / "run")
        self._setup(ModelConfig.from_dict(run["model_config"]), ckpt / "state", ("params",))
        cfg = run.get("config", {})
        where = cfg.get("tokenizer") or cfg.get("model")
        if (self.location / "tokenizer.json").is_file():  # written by the run itself
            self._extras_dir = self.location
        else:
            self._extras_dir = Path(where) if where and Path(where).exists() else None


def _read_run_record(directory: Path) -> dict:
    for candidate in (directory / "metadata", *sorted(directory.glob("*"))):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    raise SolarError(f"{directory} holds no readable run record")
