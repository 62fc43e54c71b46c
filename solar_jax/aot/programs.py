"""The programs `solar-jax train`, `eval` and `generate` run, built from shapes alone.

Each builder returns Programs whose `lower()` traces the very function the command jits
(train: solar_jax.train.objectives.make_step under compile_train_step, with the config's
grad_accum, remat, attention_impl, dtypes, mesh and rules; eval: the scorer's forward;
generate: prefill and the decode loop), on jax.ShapeDtypeStructs that carry NamedShardings.
No weight is read or allocated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.checkpoint.opener import open_source
from solar_jax.config import ModelConfig, list_presets
from solar_jax.errors import SolarError
from solar_jax.eval.scoring import _score_rows
from solar_jax.generate.engine import _decode, _prefill, bucket, prompt_bucket
from solar_jax.generate.sampling import Sampler
from solar_jax.model.transformer import abstract_params, logical_axes
from solar_jax.sharding import MeshJit, Rules, param_shardings, sharding_context
from solar_jax.train import state as state_lib
from solar_jax.train.config import TrainConfig
from solar_jax.train.dpo import make_reference_fn
from solar_jax.train.metrics import flops_per_token
from solar_jax.train.objectives import dpo_keys, make_step
from solar_jax.train.optimizer import make_optimizer, make_schedule
from solar_jax.train.step import compile_train_step

PROGRAMS = ("train", "eval", "generate")


@dataclasses.dataclass
class Program:
    name: str                     # "train", "reference", "eval", "prefill", "decode"
    lower: Callable[[], object]   # -> jax.stages.Lowered
    model_flops: float            # per call, global (all chips), whole layer stack
    tokens: int                   # tokens per call, global
    shapes: dict                  # what it was built for (batch, seq, ...)
    compiled: object = None       # set by the runner once compiled (decode reads prefill's)


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The run's architecture, from the checkpoint's config file (no weights read), the
    preset it names, or the config's `architecture` preset where the checkpoint is not
    reachable from here (a gs:// path, a run not trained yet)."""
    path = Path(cfg.model)
    if "://" not in cfg.model and path.exists():
        if cfg.model_overrides:
            raise SolarError("model_overrides apply to presets only, not to a loaded checkpoint")
        base = open_source(path).config
    elif cfg.model in list_presets():
        base = ModelConfig.from_preset(cfg.model, **cfg.model_overrides)
    elif cfg.architecture:
        if cfg.architecture not in list_presets():
            raise SolarError(f"architecture {cfg.architecture!r} is not a preset "
                             f"({', '.join(list_presets())})")
        base = ModelConfig.from_preset(cfg.architecture, **cfg.model_overrides)
    else:
        raise SolarError(f"model {cfg.model} is not readable here and is not a preset; set "
                         f"architecture=PRESET (one of {', '.join(list_presets())}) to compile "
                         f"from its shapes")
    config = base.replace(param_dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype,
                          remat=cfg.remat, attention_impl=cfg.attention_impl)
    if cfg.seq_len > config.max_position_embeddings:
        raise SolarError(f"seq_len {cfg.seq_len} is above the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _batch(keys, rows: int, seq: int, sharding) -> dict:
    """Batch arrays as the data pipelines make them: int32 ids, float32 loss weights,
    [rows] float32 reference log-probs (DPO, precomputed)."""
    out = {}
    for k in keys:
        if k.startswith("ref_"):
            out[k] = _sds((rows,), jnp.float32, sharding)
        else:
            out[k] = _sds((rows, seq), jnp.float32 if k.endswith("loss_weights") else jnp.int32,
                          sharding)
    return out


def abstract_model_params(config: ModelConfig, mesh: Mesh, rules: Rules, dtype=None) -> dict:
    abstract = abstract_params(config)
    shardings = param_shardings(abstract, logical_axes(config), mesh, rules)
    return jax.tree.map(lambda a, s: _sds(a.shape, dtype or a.dtype, s), abstract, shardings)


def train_programs(cfg: TrainConfig, config: ModelConfig, mesh: Mesh, rules: Rules) -> list:
    optimizer, schedule = make_optimizer(cfg), make_schedule(cfg)
    state = state_lib.abstract_state(config, optimizer, mesh, rules)
    step_fn, keys = make_step(cfg, config, optimizer, schedule)
    batch_sharding = state_lib.batch_sharding(mesh, rules)
    batch = _batch(keys, cfg.batch_size, cfg.seq_len, batch_sharding)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    live = cfg.objective == "dpo" and cfg.dpo.reference == "live"
    extra = (state["params"],) if live else ()
    extra_shardings = (shardings["params"],) if live else ()
    jitted = compile_train_step(step_fn, shardings, batch_sharding, keys=keys,
                                extra=extra_shardings, rules=rules)
    per_token = flops_per_token(config, cfg.seq_len)
    sequences = cfg.batch_size * (2 if cfg.objective == "dpo" else 1)  # chosen + rejected
    tokens = sequences * cfg.seq_len
    flops = per_token * tokens * ((1 + 1 / 3) if live else 1)  # + the reference's forward
    shapes = {"objective": cfg.objective, "batch_size": cfg.batch_size,
              "seq_len": cfg.seq_len, "grad_accum": cfg.grad_accum}
    programs = [Program("train", lambda: jitted.lower(state, batch, *extra), flops, tokens,
                        shapes)]
    if cfg.objective == "dpo" and not live:
        # The one pass of the reference over the data before training (reference_table).
        ref_fn = MeshJit(jax.jit(make_reference_fn(config, chunk=cfg.loss_chunk)), mesh, rules)
        ref_batch = _batch(dpo_keys(), cfg.batch_size, cfg.seq_len, batch_sharding)
        programs.append(Program("reference", lambda: ref_fn.lower(state["params"], ref_batch),
                                per_token * tokens / 3, tokens, dict(shapes, forward_only=True)))
    return programs


def eval_programs(cfg: TrainConfig, config: ModelConfig, mesh: Mesh, rules: Rules, *,
                  batch_size: int = 16) -> list:
    """`solar-jax eval`'s scoring forward (eval.scoring._score_rows) over batch_size rows
    of seq_len tokens, every position scored (a perplexity window), weights in the compute
    dtype (as `eval --dtype` loads them), tensor parallel by the rules."""
    params = abstract_model_params(config, mesh, rules, config.compute_dtype)
    rows = rules.batch_sharding(mesh)
    spec = rows.spec[0]
    rows_axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    split = 1
    for a in rows_axes:
        split *= mesh.shape[a]
    batch = max(batch_size, split)
    batch += -batch % split
    width = cfg.seq_len
    tokens = _sds((batch, width), jnp.int32, rows)
    starts = _sds((batch,), jnp.int32, rows)
    targets = _sds((batch, width), jnp.int32, rows)
    n_targets = _sds((batch,), jnp.int32, rows)
    forward = flops_per_token(config, width) / 3 * batch * width

    def lower():
        with sharding_context(mesh, rules):
            return _score_rows.lower(config, params, tokens, starts, targets, n_targets)
    return [Program("eval", lower, forward, batch * width,
                    {"batch_size": batch, "seq_len": width})]


def generate_programs(cfg: TrainConfig, config: ModelConfig, mesh: Mesh, rules: Rules, *,
                      batch_size: int = 8, prompt_len: int | None = None,
                      max_new_tokens: int | None = None, chunk: int = 16) -> list:
    """`solar-jax generate`'s two programs: prefill of batch_size prompts (prompt_len
    tokens, default half of seq_len) and the decode loop (chunk tokens per call) with a
    KV cache for prompt_len + max_new_tokens."""
    params = abstract_model_params(config, mesh, rules, config.compute_dtype)
    prompt_len = prompt_len or max(16, cfg.seq_len // 2)
    max_new_tokens = max_new_tokens or max(1, cfg.seq_len - prompt_len)
    width = prompt_bucket(prompt_len)
    cache_len = bucket(width + max_new_tokens)
    sampler = Sampler()
    rep = NamedSharding(mesh, PartitionSpec())
    rows = rules.batch_sharding(mesh)
    spec = rows.spec[0]
    split = 1
    for a in ((spec,) if isinstance(spec, str) else tuple(spec or ())):
        split *= mesh.shape[a]
    if batch_size % split:
        rows = rep  # a small batch stays whole on every chip
    ids = _sds((batch_size, width), jnp.int32, rows)
    lengths = _sds((batch_size,), jnp.int32, rows)
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
    end_ids = _sds((1,), jnp.int32, rep)
    per_token_fwd = flops_per_token(config, cache_len) / 3

    def lower_prefill():
        with sharding_context(mesh, rules):
            return _prefill.lower(config, sampler, cache_len, False, params, ids, lengths,
                                  key, end_ids)

    def lower_decode():
        # The decode loop takes the state prefill returns, laid out as prefill's compiled
        # program places it (the KV cache split over rows and kv heads).
        if prefill.compiled is None:
            prefill.compiled = lower_prefill().compile()
        with sharding_context(mesh, rules):
            state, _ = jax.eval_shape(
                lambda p, i, n, k, e: _prefill(config, sampler, cache_len, False, p, i, n, k, e),
                params, ids, lengths, key, end_ids)
            state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 state, prefill.compiled.output_shardings[0])
            return _decode.lower(config, sampler, chunk, params, None, state,
                                 _sds((), jnp.int32, rep), end_ids, _sds((), jnp.int32, rep))
    shapes = {"batch_size": batch_size, "prompt_len": width, "cache_len": cache_len,
              "decode_chunk": chunk}
    prefill = Program("prefill", lower_prefill, per_token_fwd * batch_size * width,
                      batch_size * width, shapes)
    return [prefill,
            Program("decode", lower_decode, per_token_fwd * batch_size * chunk,
                    batch_size * chunk, shapes)]


def build_programs(cfg: TrainConfig, config: ModelConfig, mesh: Mesh, rules: Rules,
                   which: str = "train") -> list:
    if which not in (*PROGRAMS, "all"):
        raise SolarError(f"unknown program {which!r}; use train, eval, generate or all")
    out = []
    if which in ("train", "all"):
        out += train_programs(cfg, config, mesh, rules)
    if which in ("eval", "all"):
        out += eval_programs(cfg, config, mesh, rules)
    if which in ("generate", "all"):
        out += generate_programs(cfg, config, mesh, rules)
    return out
