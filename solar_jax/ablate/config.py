"""The study config of `solar-jax ablate CONFIG.yaml [key=value ...]`.

Keys (README/docs/ablate.md has the full table): model, tokenizer, m, cut_points, eval_data,
calibration_data, heal_data, seq_len, batch_size, eval_tokens/eval_batches,
calibration_tokens, diagnostic_tokens, heal_tokens, heal.*, dtype, compute_dtype, seed,
mesh, out_dir, overwrite, plots, heal_checkpoint_every.

Everything that can be checked without touching the model is checked by `validate()`;
what needs the model's layer count (m and cut points in range) by `points(n)`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import typing
from pathlib import Path
from typing import Any, Literal

from solar_jax.config_io import apply_overrides, from_dict, load_yaml, rebase_paths
from solar_jax.config import list_presets
from solar_jax.data import DataConfig, expand_paths
from solar_jax.errors import SolarError
from solar_jax.train.config import TrainConfig
from solar_jax.train.run_config import RunConfig

# The TrainConfig keys a `heal:` mapping may set (same meaning, same defaults). seq_len and
# the data are the study's; steps follow from heal_tokens; batch_size defaults to the
# study's batch_size.
HEAL_KEYS = ("learning_rate", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay",
             "beta1", "beta2", "eps", "grad_clip", "z_loss", "loss_chunk", "batch_size",
             "grad_accum", "remat")


def _heal_fields():
    hints = typing.get_type_hints(TrainConfig)
    defaults = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = []
    for name in HEAL_KEYS:
        if name == "batch_size":
            out.append((name, int | None, dataclasses.field(default=None)))
        else:
            out.append((name, hints[name], dataclasses.field(default=defaults[name].default)))
    return out


HealConfig = dataclasses.make_dataclass("HealConfig", _heal_fields())
HealConfig.__doc__ = ("Healing (continued pretraining of each candidate): TrainConfig's "
                      "optimizer keys " + ", ".join(HEAL_KEYS) + ".")


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps', '1 warmup step' (word is the singular)."""
    return f"{n} {word}{'' if n == 1 else 's'}"


# `model: smollm2-gguf` names the SmolLM2-135M-Instruct GGUF that `make install` puts in
# the venv (the demo's model), so the CPU config needs no path that depends on the venv.
MODEL_ALIASES = {"smollm2-gguf": "solar_jax.demo:smollm2_gguf"}


def resolve_model(name: str) -> str:
    if name in MODEL_ALIASES:
        module, attr = MODEL_ALIASES[name].split(":")
        return str(getattr(importlib.import_module(module), attr)())
    return name


@dataclasses.dataclass(frozen=True)
class Point:
    """One candidate: layers [0, a) of copy A then [b, n) of copy B.

    SOLAR's recipe with m is a = n - m, b = m. a > b duplicates layers [b, a); a < b
    prunes layers [a, b) (Gromov et al.'s block removal); a == b is the original model.
    """
    a: int
    b: int
    n: int

    @property
    def m(self) -> int | None:
        """SOLAR's m when the point is SOLAR's recipe (a + b == n), else None."""
        return self.b if self.a + self.b == self.n else None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        out = []
        if self.a > 0:
            out.append((0, self.a))
        if self.b < self.n:
            out.append((self.b, self.n))
        return out

    @property
    def layers(self) -> int:
        return self.a + self.n - self.b

    @property
    def key(self) -> str:
        return f"a{self.a}-b{self.b}"

    @property
    def label(self) -> str:
        return f"m={self.m}" if self.m is not None else f"cut [0,{self.a})+[{self.b},{self.n})"


@dataclasses.dataclass
class AblateConfig(RunConfig):
    # model (a checkpoint load_model accepts, or a preset name: random init),
    # model_overrides, tokenizer (default: the model's own), attention_impl, seed, mesh,
    # logical_axis_rules and distributed are RunConfig's, shared with `solar-jax train`.
    m: Any = None  # list of ints, one int, {first, last, step} or {start, stop, step}
    cut_points: list[list[int]] = dataclasses.field(default_factory=list)  # [[a, b], ...]
    eval_data: Any = None  # a path / glob / list, or a data.* mapping (DataConfig)
    calibration_data: Any = None  # default: eval_data
    heal_data: Any = None  # default: the rows of eval_data that are not held out
    seq_len: int = 512
    batch_size: int = 8  # rows per evaluation/diagnostics batch; heal.batch_size default
    eval_tokens: int | None = None  # held-out tokens (rounded up to rows); default below
    eval_batches: int | None = None  # ... or held-out batches of batch_size rows
    calibration_tokens: int = 16384
    diagnostic_tokens: Literal["all", "last"] = "all"  # which tokens the similarities average
    heal_tokens: int = 0  # 0 = no healing
    heal: HealConfig = dataclasses.field(default_factory=HealConfig)
    heal_checkpoint_every: int = 0  # >0: checkpoint healing every N steps (resume mid-point)
    heal_checkpoint_dir: str | None = None  # default out_dir/heal; may be gs:// (multi-host)
    dtype: Literal["float32", "bfloat16"] = "float32"  # parameter dtype
    compute_dtype: Literal["float32", "bfloat16"] | None = None  # default: dtype
    out_dir: str = ""
    overwrite: bool = False  # recompute points stored by a different setup instead of failing
    plots: bool = True

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Every check that needs neither the model nor the data files' contents."""
        if not self.model:
            raise SolarError("config key model is not set; give a checkpoint path or a preset")
        if not self.out_dir:
            raise SolarError("config key out_dir is not set; give a directory for the results")
        for key in ("seq_len", "batch_size", "calibration_tokens"):
            if getattr(self, key) <= 0:
                raise SolarError(f"config key {key} must be positive, got {getattr(self, key)}")
        for key in ("eval_tokens", "eval_batches"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise SolarError(f"config key {key} must be positive, got {value}")
        if self.eval_tokens is not None and self.eval_batches is not None:
            raise SolarError("give eval_tokens or eval_batches, not both")
        if self.heal_tokens < 0:
            raise SolarError(f"config key heal_tokens must be >= 0 (0 = no healing), "
                             f"got {self.heal_tokens}")
        if self.heal_checkpoint_every < 0:
            raise SolarError("config key heal_checkpoint_every must be >= 0 (0 = off)")
        if self.m == [] or (not self.m_values() and not self.cut_pairs()):
            raise SolarError("m is empty: give at least one m (e.g. m: [4, 8, 12]); for cut "
                             "points only, leave m unset and give cut_points")
        self.cut_pairs()
        if self.eval_data is None or self.eval_data == "" or self.eval_data == []:
            raise SolarError("eval_data is not set: give the held-out text set (a file, "
                             "directory, glob, list, or a data mapping with path:)")
        for name in ("eval_data", "calibration_data", "heal_data"):
            data = self.data_config(name)
            if data is not None:
                try:
                    expand_paths(data.paths)
                except SolarError as e:
                    raise SolarError(f"{name}: {e}") from None
        if self.heal_tokens:
            self.train_config()  # heal.* values, warmup vs steps, batch divisibility

    def m_values(self) -> list[int]:
        """The requested m values in order, duplicates dropped (range checks: points())."""
        spec = self.m
        if spec is None:
            return []
        if isinstance(spec, dict):
            keys = set(spec)
            if keys <= {"first", "last", "step"} and {"first", "last"} <= keys:
                first, last, step = spec["first"], spec["last"], spec.get("step", 1)
                values = None
            elif keys <= {"start", "stop", "step"} and {"start", "stop"} <= keys:
                first, last, step = spec["start"], spec["stop"], spec.get("step", 1)
                values = "exclusive"
            else:
                raise SolarError(f"m as a range must be {{first, last, step}} (inclusive) or "
                                 f"{{start, stop, step}} (stop excluded), got {spec!r}")
            for v in (first, last, step):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise SolarError(f"m range bounds must be integers, got {spec!r}")
            if step <= 0:
                raise SolarError(f"m range step must be positive, got {step}")
            spec = list(range(first, last if values else last + 1, step))
            if not spec:
                raise SolarError(f"m range {self.m!r} is empty")
        if not isinstance(spec, list):
            spec = [spec]
        out: list[int] = []
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, int):
                raise SolarError(f"m must hold integers, got {v!r}")
            if v < 0:
                raise SolarError(f"m={v} is negative; m counts the layers removed from each copy "
                                 f"(0 <= m < num_layers)")
            if v not in out:
                out.append(v)
        return out

    def cut_pairs(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for k, pair in enumerate(self.cut_points):
            if len(pair) != 2:
                raise SolarError(f"cut_points[{k}] must be a pair [a, b] (keep [0, a) of copy A "
                                 f"and [b, n) of copy B), got {pair!r}")
            a, b = pair
            if a < 0 or b < 0:
                raise SolarError(f"cut_points[{k}] = {pair!r} has a negative layer index")
            if (a, b) not in out:
                out.append((a, b))
        return out

    def points(self, n: int) -> list[Point]:
        """The candidates for an n-layer model: m values first, then cut points."""
        out: list[Point] = []
        for m in self.m_values():
            if m >= n:
                raise SolarError(f"m={m} is out of range for the model's {n} layers: need "
                                 f"0 <= m < {n} (m=0 stacks two full copies)")
            out.append(Point(n - m, m, n))
        for k, (a, b) in enumerate(self.cut_pairs()):
            if a > n or b > n:
                raise SolarError(f"cut_points[{k}] = [{a}, {b}] is out of range for the model's "
                                 f"{n} layers: need 0 <= a <= {n} and 0 <= b <= {n}")
            if a + n - b <= 0:
                raise SolarError(f"cut_points[{k}] = [{a}, {b}] keeps no layers")
            point = Point(a, b, n)
            if point not in out:
                out.append(point)
        return out

    # -- derived settings --------------------------------------------------------------------
    def data_config(self, name: str) -> DataConfig | None:
        value = getattr(self, name)
        if value is None:
            return None
        if isinstance(value, (str, list)):
            if isinstance(value, list) and not all(isinstance(p, str) for p in value):
                raise SolarError(f"{name} must be a path, a list of paths or a data mapping")
            return DataConfig(path=value)
        if isinstance(value, dict):
            return from_dict(DataConfig, value, f"{name}.")
        if isinstance(value, DataConfig):
            return value
        raise SolarError(f"{name} must be a path, a list of paths or a data mapping, got {value!r}")

    @property
    def heal_batch_size(self) -> int:
        return self.heal.batch_size or self.batch_size

    @property
    def heal_steps(self) -> int:
        if not self.heal_tokens:
            return 0
        return math.ceil(self.heal_tokens / (self.heal_batch_size * self.seq_len))

    def train_config(self) -> TrainConfig:
        """The TrainConfig healing runs with (also used to resolve the model config)."""
        heal = {k: getattr(self.heal, k) for k in HEAL_KEYS if k != "batch_size"}
        steps = max(self.heal_steps, 1)
        if self.heal_tokens and heal["warmup_steps"] > steps:
            raise SolarError(f"heal.warmup_steps={heal['warmup_steps']} exceeds the {steps} "
                             f"healing steps that heal_tokens={self.heal_tokens} gives at "
                             f"{self.heal_batch_size} x {self.seq_len} tokens per step")
        if not self.heal_tokens:
            heal["warmup_steps"] = 0
        shared = {**self.run_settings(), "model": resolve_model(self.model),
                  "model_overrides": dict(self.model_overrides), "mesh": dict(self.mesh)}
        tc = TrainConfig(**shared, seq_len=self.seq_len, batch_size=self.heal_batch_size,
                         steps=steps, param_dtype=self.dtype,
                         compute_dtype=self.compute_dtype or self.dtype, progress=False,
                         tensorboard=False, **heal)
        try:
            tc.validate()
        except SolarError as e:
            raise SolarError(f"heal: {e}") from None
        return tc

    def settings(self, what: str) -> dict:
        """What a stored result depends on: a point ('eval') or the diagnostics ('diag').
        The m list, cut points, out_dir, mesh and plotting are not part of it."""
        def path(p):
            return str(Path(p).resolve()) if p and os.path.exists(p) else p

        def data(name):
            d = self.data_config(name)
            return None if d is None else {**d.to_dict(), "path": [path(p) for p in d.paths]}

        common = {"model": path(resolve_model(self.model)), "model_overrides": self.model_overrides,
                  "tokenizer": path(self.tokenizer), "seq_len": self.seq_len,
                  "batch_size": self.batch_size, "seed": self.seed, "dtype": self.dtype,
                  "compute_dtype": self.compute_dtype or self.dtype}
        if what == "diag":
            return {**common, "calibration_data": data("calibration_data") or data("eval_data"),
                    "calibration_tokens": self.calibration_tokens,
                    "diagnostic_tokens": self.diagnostic_tokens}
        return {**common, "eval_data": data("eval_data"), "heal_data": data("heal_data"),
                "eval_tokens": self.eval_tokens, "eval_batches": self.eval_batches,
                "heal_tokens": self.heal_tokens,
                "heal": dataclasses.asdict(self.heal) if self.heal_tokens else None}


# Config keys holding paths: relative ones are relative to the config file (config_io).
PATH_KEYS = ("model", "tokenizer", "eval_data", "calibration_data", "heal_data",
             "heal_checkpoint_dir", "out_dir")


def load_ablate_config(path: str | Path | None, overrides: list[str] = ()) -> AblateConfig:
    data = load_yaml(path) if path else {}
    if path:
        data = rebase_paths(data, path, PATH_KEYS, names=[*list_presets(), *MODEL_ALIASES])
    data = apply_overrides(data, list(overrides))
    config = from_dict(AblateConfig, data)
    config.validate()
    return config
