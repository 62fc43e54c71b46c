"""What benchmarks/train_step.py measures: the machine, a random batch, the matmul peak,
solar-jax's train step (run, and compiled from shapes alone) and PyTorch's."""

from __future__ import annotations

import os
import time

import _machine
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from solar_jax.config import ModelConfig
from solar_jax.model.transformer import abstract_params, logical_axes
from solar_jax.sharding import DEFAULT_RULES, make_mesh, param_shardings
from solar_jax.train import state as state_lib
from solar_jax.train.config import TrainConfig
from solar_jax.train.optimizer import make_optimizer, make_schedule
from solar_jax.train.step import BATCH_KEYS, compile_train_step, make_train_step

PRESET = "smollm2-135m"


# --------------------------------------------------------------------------- machine

def machine_info() -> dict:
    info = _machine.machine_info(("jax", "jaxlib", "flax", "optax", "numpy", "torch",
                                  "transformers"))
    return {**info, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax_devices": [str(d) for d in jax.devices()]}


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------- batch

def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens; row r is one document: targets = next token, positions 0..seq-1."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": np.ones((batch, seq), np.float32),
            "segment_ids": np.ones((batch, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()}


# --------------------------------------------------------------------------- peak

def best_rate(fn, flops: float, reps: int) -> tuple[float, float]:
    """(FLOP/s of wall time, FLOP per process-CPU-second), each the best of `reps` calls."""
    fn()
    wall, cpu = float("inf"), float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return flops / wall, flops / cpu


def jax_matmul_flops(n: int, reps: int, dtype: str = "float32") -> tuple[float, float]:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: x @ y)
    return best_rate(lambda: mm(a, b).block_until_ready(), 2 * n ** 3, reps)


def torch_matmul_flops(n: int, reps: int, dtype: str = "float32") -> tuple[float, float]:
    import torch
    a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
    return best_rate(lambda: a @ b, 2 * n ** 3, reps)


# --------------------------------------------------------------------------- solar-jax

def train_config(args) -> TrainConfig:
    cfg = TrainConfig(model=PRESET, seq_len=args.seq, batch_size=args.batch,
                      steps=max(args.warmup + args.steps * args.rounds, 1),
                      loss_chunk=args.loss_chunk or TrainConfig.loss_chunk, remat=args.remat,
                      compute_dtype=args.dtype)
    cfg.validate()
    return cfg


def model_config(cfg: TrainConfig, num_layers: int | None = None) -> ModelConfig:
    overrides = {"num_layers": num_layers} if num_layers else {}
    return ModelConfig.from_preset(PRESET, **overrides).replace(
        param_dtype="float32", compute_dtype=cfg.compute_dtype, remat=cfg.remat,
        attention_impl=cfg.attention_impl)


def build_step(config: ModelConfig, cfg: TrainConfig):
    optimizer, schedule = make_optimizer(cfg), make_schedule(cfg)
    step = make_train_step(config, optimizer, schedule, grad_accum=cfg.grad_accum,
                           chunk=cfg.loss_chunk, z_loss=cfg.z_loss)
    return optimizer, step


class JaxRunner:
    def __init__(self, cfg: TrainConfig, batch: dict[str, np.ndarray]):
        self.config = model_config(cfg)
        mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        optimizer, step = build_step(self.config, cfg)
        params = state_lib.create_params(self.config, None, mesh, state_lib.rules_for(cfg),
                                         cfg.seed)
        self.state = state_lib.create_state(params, optimizer, mesh)
        sharding = state_lib.batch_sharding(mesh)
        self.batch = {k: jax.device_put(batch[k], sharding) for k in BATCH_KEYS}
        self.step_fn = compile_train_step(step, state_lib.state_shardings(self.state), sharding)
        self.losses: list[float] = []
        t0 = time.perf_counter()
        self.compiled = self.step_fn.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0

    def run(self, n: int) -> list[tuple[float, float]]:
        """(wall seconds, process CPU seconds) of each of n steps (each waited for: at ~10 s
        a step, losing the overlap of the next dispatch costs nothing measurable)."""
        times, metrics = [], None
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            self.state, metrics = self.compiled(self.state, self.batch)
            jax.block_until_ready((self.state, metrics))
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        if metrics is not None:
            if not bool(metrics["finite"]):
                raise SystemExit("solar-jax: non-finite loss or gradient")
            self.losses.append(float(metrics["loss"]))
        return times


def abstract_state(config: ModelConfig, optimizer, mesh):
    """ShapeDtypeStructs (with shardings) of {'params', 'opt_state', 'step'}, as create_state
    would place them, without allocating anything."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = abstract_params(config)
    shardings = param_shardings(abstract, logical_axes(config), mesh, DEFAULT_RULES)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, s: s, opt_abstract, shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    opt_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             opt_abstract, opt_shardings)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    state = {"params": params, "opt_state": opt_state, "step": step}
    return state, jax.tree.map(lambda x: x.sharding, state)


def compile_time(cfg: TrainConfig, num_layers: int, batch: int, seq: int) -> dict:
    """Seconds to trace+lower and to compile the train step at `num_layers`."""
    config = model_config(cfg, num_layers)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    optimizer, step = build_step(config, cfg)  # fresh closures: no tracing cache hits
    state, shardings = abstract_state(config, optimizer, mesh)
    sharding = state_lib.batch_sharding(mesh)
    shapes = {"input_ids": jnp.int32, "targets": jnp.int32, "loss_weights": jnp.float32,
              "segment_ids": jnp.int32, "positions": jnp.int32}
    abstract_batch = {k: jax.ShapeDtypeStruct((batch, seq), shapes[k], sharding=sharding)
                      for k in BATCH_KEYS}
    jitted = compile_train_step(step, shardings, sharding)
    t0 = time.perf_counter()
    lowered = jitted.lower(state, abstract_batch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0}


# --------------------------------------------------------------------------- PyTorch

class TorchRunner:
    def __init__(self, cfg: TrainConfig, batch: dict[str, np.ndarray], threads: int,
                 attn: str, fused: bool):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)
        self.torch = torch
        hf = model_config(cfg).to_hf("float32")
        hf.pop("architectures", None)
        hf.pop("torch_dtype", None)
        hf["use_cache"] = False
        config = LlamaConfig(**hf)
        config._attn_implementation = attn
        self.model = LlamaForCausalLM(config).to(torch.float32).train()
        self.attn = self.model.config._attn_implementation
        self.tied = (self.model.lm_head.weight.data_ptr()
                     == self.model.model.embed_tokens.weight.data_ptr())
        self.num_params = sum(p.numel() for p in self.model.parameters())
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if "norm" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
            **({"fused": True} if fused else {}))
        self.grad_clip = cfg.grad_clip
        # bf16 compute as solar-jax's compute_dtype=bfloat16: fp32 master weights, the
        # forward (and so its backward) under CPU autocast, which runs the matmuls in bf16.
        self.autocast = cfg.compute_dtype == "bfloat16"
        # HF would shift `labels` itself and predict seq-1 tokens per row; passing
        # shift_labels (transformers' loss kwarg) makes it predict exactly solar-jax's
        # targets, all seq of them (labels must still be given for .loss to be computed).
        self.input_ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
        self.labels = torch.from_numpy(batch["input_ids"].astype(np.int64))
        self.shift_labels = torch.from_numpy(batch["targets"].astype(np.int64))
        self.losses: list[float] = []

    def one_step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.autocast):
            loss = self.model(input_ids=self.input_ids, labels=self.labels,
                              shift_labels=self.shift_labels).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def run(self, n: int) -> list[tuple[float, float]]:
        """(wall seconds, process CPU seconds) of each of n steps."""
        times, loss = [], None
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = self.one_step()
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        if loss is not None:
            self.losses.append(loss)
        return times
