"""`run_ablation(cfg)`: the sweep behind `solar-jax ablate`.

    load the base model once (sharded on the mesh) ─┬─ diagnostics on calibration rows
                                                    ├─ baseline held-out loss
    for each candidate (m or cut point):            │
        upscale on device (jit, out_shardings) ─ held-out loss ─ heal (heal.py: the
        training core's step loop) ─ held-out loss ─ record points/<key>.json (atomic)
    results.csv / results.json / report.md / plots from the records

Resume: every finished candidate (and the diagnostics and the baseline) is a JSON record
in out_dir/points, written atomically the moment it is done; a restarted sweep loads those
and computes only what is missing. A record made with different settings (model, data,
seq_len, healing, ...) is an error unless overwrite=true. With heal_checkpoint_every > 0
healing itself checkpoints (orbax, the training core's RunCheckpointer) and resumes
mid-candidate; SIGTERM/SIGINT during healing finish and checkpoint the step, then end the
sweep (`interrupted`, exit 130/143).

Modules: config.py (keys, candidates), records.py (record store), runtime.py (mesh,
evaluation), heal.py (healing), diagnostics.py, report.py / plots.py (outputs); the rows
come from solar_jax.data (RowSet, RowStream).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np
from etils import epath

from solar_jax.ablate.config import AblateConfig, Point, plural, resolve_model
from solar_jax.ablate.diagnostics import layer_similarity, seam_distance
from solar_jax.ablate.heal import heal
from solar_jax.ablate.records import COLUMNS, Store, jsonable
from solar_jax.ablate.report import write_outputs
from solar_jax.ablate.runtime import Runtime, broadcast_flags
from solar_jax.data import PretrainDataset, RowSet, RowStream, build_pretrain_dataset
from solar_jax.destination import check_overlap
from solar_jax.dus import upscale
from solar_jax.errors import SolarError
from solar_jax.sharding import make_mesh
from solar_jax.tokenizer import run_tokenizer
from solar_jax.train import state as state_lib
from solar_jax.train.loop import init_distributed

_UPSCALE_FNS: dict = {}


def _check_out_dir(cfg: AblateConfig) -> None:
    """The destination guard: out_dir (results, plots, healing checkpoints) must not be,
    hold or lie inside the model, the tokenizer or a data file."""
    inputs = [resolve_model(str(cfg.model)), cfg.tokenizer]
    for name in ("eval_data", "calibration_data", "heal_data"):
        data = cfg.data_config(name)
        inputs += [p for p in (data.paths if data else []) if not any(c in p for c in "*?[")]
    check_overlap(cfg.out_dir, [p for p in inputs if p and Path(p).exists()], what="out_dir")


# -- data ------------------------------------------------------------------------------------
def _rows_for(tokens: int | None, batches: int | None, cfg: AblateConfig) -> int | None:
    if batches is not None:
        return batches * cfg.batch_size
    if tokens is not None:
        return math.ceil(tokens / cfg.seq_len)
    return None


@dataclasses.dataclass
class StudyData:
    eval_rows: RowSet
    calibration_rows: RowSet
    heal: RowStream | PretrainDataset | None  # .batch(step); None without healing
    heal_source: str


def build_data(cfg: AblateConfig, tokenizer, *, process_index: int = 0,
               process_count: int = 1) -> StudyData:
    def dataset(name, batch_size):
        try:
            return build_pretrain_dataset(cfg.data_config(name), tokenizer, seq_len=cfg.seq_len,
                                          global_batch_size=batch_size, seed=cfg.seed,
                                          process_index=process_index,
                                          process_count=process_count)
        except SolarError as e:
            raise SolarError(f"{name}: {e}") from None

    share = dict(process_index=process_index, process_count=process_count)
    evals = dataset("eval_data", cfg.batch_size)
    split = cfg.heal_tokens > 0 and cfg.heal_data is None
    wanted = _rows_for(cfg.eval_tokens, cfg.eval_batches, cfg)
    if wanted is None:  # default: everything, or 10% (at least one batch) when splitting
        wanted = max(cfg.batch_size, math.ceil(0.1 * evals.num_rows)) if split else evals.num_rows
    n_eval = min(wanted, evals.num_rows)
    if split and n_eval >= evals.num_rows:
        raise SolarError(f"eval_data has {evals.num_rows} rows of seq_len={cfg.seq_len} and all "
                         f"are held out, none are left to heal on: lower eval_tokens/"
                         f"eval_batches or set heal_data")
    eval_rows = RowSet(evals, np.arange(n_eval), cfg.batch_size, **share)

    n_cal = math.ceil(cfg.calibration_tokens / cfg.seq_len)
    if cfg.calibration_data is None:
        calibration_rows = RowSet(evals, np.arange(min(n_cal, evals.num_rows)), cfg.batch_size,
                                  **share)
    else:
        cal = dataset("calibration_data", cfg.batch_size)
        calibration_rows = RowSet(cal, np.arange(min(n_cal, cal.num_rows)), cfg.batch_size,
                                  **share)

    heal_rows, source = None, ""
    if cfg.heal_tokens:
        if split:
            heal_rows = RowStream(evals, np.arange(n_eval, evals.num_rows), cfg.heal_batch_size,
                             cfg.seed, **share)
            source = f"eval_data rows {n_eval}..{evals.num_rows - 1} (not held out)"
        else:
            heal_rows = dataset("heal_data", cfg.heal_batch_size)
            source = "heal_data"
    return StudyData(eval_rows, calibration_rows, heal_rows, source)


# -- the sweep -------------------------------------------------------------------------------
def run_ablation(cfg: AblateConfig, *, log=None) -> dict:
    """Run (or resume) the study of `cfg`; returns the results dict (also written to
    out_dir as results.json, results.csv, report.md and the plots)."""
    cfg.validate()
    _check_out_dir(cfg)
    init_distributed(cfg)
    main = jax.process_index() == 0
    if log is None:
        log = (lambda msg: print(msg, flush=True)) if main else (lambda msg: None)
    mesh = make_mesh(cfg.mesh)
    tc = cfg.train_config()
    config, source = state_lib.model_config_for(tc)
    n = config.num_layers
    points = cfg.points(n)
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    for key, size in (("batch_size", cfg.batch_size), ("heal.batch_size", cfg.heal_batch_size)):
        if size % parallel or size % jax.process_count():
            raise SolarError(f"{key} {size} is not divisible by the mesh's data x fsdp = "
                             f"{parallel} (and the {jax.process_count()} processes)")
    tokenizer = run_tokenizer(cfg.tokenizer, source)
    if len(tokenizer) > config.vocab_size:
        raise SolarError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab is "
                         f"{config.vocab_size}")
    data = build_data(cfg, tokenizer, process_index=jax.process_index(),
                      process_count=jax.process_count())
    out = Path(cfg.out_dir)
    store = Store(out, overwrite=cfg.overwrite, writer=main)
    extra = {"eval_rows": data.eval_rows.num_rows, "num_layers": n}
    s_eval = {**cfg.settings("eval"), **extra}
    s_base = {k: v for k, v in s_eval.items() if k not in ("heal_tokens", "heal", "heal_data")}
    s_diag = {**cfg.settings("diag"), "calibration_rows": data.calibration_rows.num_rows}
    log(f"ablate: {config.model_type} with {plural(n, 'layer')} "
        f"({config.num_params / 1e6:.1f}M params), {plural(len(points), 'candidate')}, held-out "
        f"{plural(data.eval_rows.num_rows, 'row')} x {cfg.seq_len}"
        + (f", healing {plural(cfg.heal_tokens, 'token')} = {plural(cfg.heal_steps, 'step')} of "
           f"{cfg.heal_batch_size} x {cfg.seq_len} on {data.heal_source}"
           if cfg.heal_tokens else ", no healing"))

    diag = store.get("diagnostics", s_diag)
    base = store.get("base", s_base)
    records = {p.key: store.get(p.key, s_eval) for p in points}
    have = broadcast_flags([diag is not None, base is not None]
                            + [records[p.key] is not None for p in points])
    params = None
    if not all(have):
        t0 = time.perf_counter()
        params = state_lib.create_params(config, source, mesh, state_lib.rules_for(cfg),
                                         cfg.seed)
        log(f"loaded {source or cfg.model} ({time.perf_counter() - t0:.1f}s)")
    rt = Runtime(cfg, mesh, state_lib.rules_for(cfg))
    chunk = tc.loss_chunk

    if not have[0]:
        t0 = time.perf_counter()
        sim = layer_similarity(config, params, data.calibration_rows.batches(),
                               last_only=cfg.diagnostic_tokens == "last", place=rt.place)
        diag = {"angular_distance": sim["angular_distance"], "cosine": sim["cosine"],
                "block_influence": sim["block_influence"], "tokens": sim["tokens"],
                "seconds": time.perf_counter() - t0}
        store.put("diagnostics", s_diag, diag)
        diag = jsonable(diag)
        log(f"diagnostics on {plural(sim['tokens'], 'calibration token')} ({diag['seconds']:.1f}s)")
    else:
        log("diagnostics: done before, loaded")
    if not have[1]:
        t0 = time.perf_counter()
        ev = rt.evaluate(config, params, data.eval_rows, chunk)
        base = {"layers": n, "params": config.num_params, "loss": ev["loss"], "ppl": ev["ppl"],
                "acc": ev["acc"], "tokens": ev["tokens"], "seconds": time.perf_counter() - t0}
        store.put("base", s_base, base)
        log(f"base model: loss {ev['loss']:.4f} (ppl {ev['ppl']:.2f}) on "
            f"{plural(ev['tokens'], 'token')}")
    else:
        log("base model: done before, loaded")

    # (None only on processes other than 0 when out_dir is local to process 0)
    angular = np.asarray(diag["angular_distance"], np.float64) if diag is not None else None
    for i, point in enumerate(points):
        tag = f"[{i + 1}/{len(points)}] {point.label} ({plural(point.layers, 'layer')})"
        if have[2 + i]:
            log(f"{tag}: done before, skipped")
            continue
        t0 = time.perf_counter()
        record = run_point(rt, cfg, tc, config, params, point, data, chunk, out, log=log,
                           settings=s_eval)
        if angular is not None:
            record["seam_distance"] = seam_distance(angular, point.a, point.b)
        record["seconds"] = time.perf_counter() - t0
        records[point.key] = jsonable(record)
        store.put(point.key, s_eval, record)
        after = (f" -> healed {record['loss_after']:.4f}" if record["loss_after"] is not None
                 else "")
        log(f"{tag}: loss {record['loss_before']:.4f}{after} ({record['seconds']:.1f}s)")

    if not main:
        return {}
    # Every process computed; process 0 now re-reads its own records (the table is built
    # from disk, so a resumed sweep and a fresh one produce the same files).
    rows = [_row(store.get(p.key, s_eval), p, angular) for p in points]
    return write_outputs(cfg, out, rows=rows, base=base, diag=diag, config=config,
                         heal_source=data.heal_source, log=log)


def _row(record: dict, point: Point, angular) -> dict:
    row = {c: record.get(c) for c in COLUMNS}
    row.update(m=point.m, cut_a=point.a, cut_b=point.b, layers=point.layers,
               seam_distance=seam_distance(angular, point.a, point.b))
    return row


def run_point(rt: Runtime, cfg: AblateConfig, tc, config, params, point: Point,
              data: StudyData, chunk: int, out: Path, *, log, settings=None) -> dict:
    """Build one candidate on device, evaluate, heal, evaluate again."""
    dus_config = config.replace(num_layers=point.layers)
    ranges = point.ranges
    key = (config, tuple(ranges), rt.mesh)
    if key not in _UPSCALE_FNS:
        _UPSCALE_FNS[key] = jax.jit(lambda p: upscale(p, config, ranges)[0],
                                    out_shardings=rt.param_shardings(dus_config))
    dus = _UPSCALE_FNS[key](params)
    before = rt.evaluate(dus_config, dus, data.eval_rows, chunk)
    record = {"params": dus_config.num_params, "loss_before": before["loss"],
              "ppl_before": before["ppl"], "acc_before": before["acc"], "loss_after": None,
              "ppl_after": None, "acc_after": None, "heal_tokens": cfg.heal_tokens,
              "heal_steps": 0, "heal_final_train_loss": None, "heal_status": None,
              "eval_tokens": before["tokens"]}
    if cfg.heal_tokens:
        root = cfg.heal_checkpoint_dir or str(out / "heal")
        ckpt_dir = f"{root.rstrip('/')}/{point.key}"
        healed, info = heal(rt, dus_config, dus, tc, data.heal, ckpt_dir=ckpt_dir, log=log,
                            settings=settings)
        after = rt.evaluate(dus_config, healed, data.eval_rows, chunk)
        record.update(loss_after=after["loss"], ppl_after=after["ppl"], acc_after=after["acc"],
                      **info)
        del healed
        if jax.process_index() == 0 and cfg.heal_checkpoint_every:
            path = epath.Path(ckpt_dir)
            if path.exists():  # the candidate is recorded: its healing state is not needed
                path.rmtree()
    return record


