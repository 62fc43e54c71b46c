"""The sharded train state: params and optimizer state placed on the mesh by logical-axis
rules, created without ever holding the whole model on one device.

A preset model is initialized inside a jit whose out_shardings are the param shardings;
a checkpoint is read leaf by leaf and each leaf is placed with
`jax.make_array_from_callback`, which works across hosts (each host fills only its own
devices' shards).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.checkpoint.opener import open_source
from solar_jax.config import ModelConfig, list_presets
from solar_jax.errors import SolarError
from solar_jax.model.transformer import abstract_params, init_params, logical_axes
from solar_jax.sharding import Rules, as_rules, param_shardings
from solar_jax.train.config import TrainConfig
from solar_jax.tree_paths import get_leaf, set_leaf


def model_config_for(cfg: TrainConfig) -> tuple[ModelConfig, Path | None]:
    """The model's architecture plus the run's precision/remat/attention choices, and the
    checkpoint to load (None for a preset initialized from scratch)."""
    path = Path(cfg.model)
    if path.exists():
        if cfg.model_overrides:
            raise SolarError("model_overrides apply to presets only, not to a loaded checkpoint")
        base, source = open_source(path).config, path
    else:
        if cfg.model not in list_presets():
            raise SolarError(f"model {cfg.model!r} is neither an existing checkpoint nor a preset "
                             f"({', '.join(list_presets())})")
        base, source = ModelConfig.from_preset(cfg.model, **cfg.model_overrides), None
    config = base.replace(param_dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype,
                          remat=cfg.remat, attention_impl=cfg.attention_impl)
    if cfg.seq_len > config.max_position_embeddings:
        raise SolarError(f"seq_len {cfg.seq_len} is above the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config, source


def abstract_shapes(config: ModelConfig) -> dict:
    return jax.tree.map(lambda x: tuple(x.shape), abstract_params(config))


def rules_for(cfg: TrainConfig) -> Rules:
    """The run's one rules object: the defaults with the config's logical_axis_rules."""
    return Rules.create({name: tuple(axes) if axes else None
                         for name, axes in (cfg.logical_axis_rules or {}).items()})


def create_params(config: ModelConfig, source: Path | None, mesh: Mesh, rules: Rules,
                  seed: int) -> dict:
    shardings = param_shardings(abstract_params(config), logical_axes(config), mesh, rules)
    if source is None:
        return jax.jit(lambda: init_params(config, seed), out_shardings=shardings)()
    src = open_source(source)
    dtype = jnp.dtype(config.param_dtype)
    params: dict = {}
    for path in src.leaf_paths():
        host = src.read_leaf(path).astype(dtype, copy=False)
        sharding = get_leaf(shardings, path)
        leaf = jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx])
        set_leaf(params, path, leaf)
        del host
    return params


def optimizer_shardings(optimizer: optax.GradientTransformation, params, mesh: Mesh):
    """Moments follow their parameter's sharding; counters and other scalars are replicated.
    `params` may be arrays or ShapeDtypeStructs carrying shardings."""
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings_tree = jax.tree.map(lambda x: x.sharding, params)
    return optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, jax.eval_shape(optimizer.init, params),
        param_shardings_tree, transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                   rules: Rules) -> dict:
    """The train state as ShapeDtypeStructs with their shardings: what `create_state` would
    place, without allocating anything (ahead-of-time compilation, solar_jax.aot)."""
    abstract = abstract_params(config)
    shardings = param_shardings(abstract, logical_axes(config), mesh, rules)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    opt = jax.eval_shape(optimizer.init, params)
    opt = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       opt, optimizer_shardings(optimizer, params, mesh))
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    return {"params": params, "opt_state": opt, "step": step}


def create_state(params: dict, optimizer: optax.GradientTransformation, mesh: Mesh) -> dict:
    """{'params', 'opt_state', 'step'}, every leaf a global array on the mesh."""
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optimizer_shardings(optimizer, params, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    step = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=replicated)()
    return {"params": params, "opt_state": opt_state, "step": step}


def state_shardings(state: dict):
    return jax.tree.map(lambda x: x.sharding, state)


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    """Rows of every batch array split by the "batch" rule (dcn, data, fsdp by default)."""
    return as_rules(rules).batch_sharding(mesh)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Assemble each process's rows into global arrays sharded by the batch rule."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
