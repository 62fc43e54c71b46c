"""`run_ablation(cfg)`: the sweep behind `solar-jax ablate`.

    load the base model once (sharded on the mesh) ─┬─ diagnostics on calibration rows
                                                    ├─ baseline held-out loss
    for each candidate (m or cut point):            │
        upscale on device (jit, out_shardings) ─ held-out loss ─ heal (training core) ─
        held-out loss ─ record points/<key>.json (atomic)
    results.csv / results.json / report.md / plots from the records

Resume: every finished candidate (and the diagnostics and the baseline) is a JSON record
in out_dir/points, written atomically the moment it is done; a restarted sweep loads those
and computes only what is missing. A record made with different settings (model, data,
seq_len, healing, ...) is an error unless overwrite=true. With heal_checkpoint_every > 0
healing itself checkpoints (orbax, the training core's RunCheckpointer) and resumes
mid-candidate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from solar_jax.ablate.config import AblateConfig, Point, plural, resolve_model
from solar_jax.ablate.diagnostics import layer_similarity, seam_distance
from solar_jax.ablate.records import COLUMNS, jsonable
from solar_jax.ablate.report import write_outputs
from solar_jax.destination import check_overlap, write_text_atomic
from solar_jax.errors import SolarError
from solar_jax.tokenizer import run_tokenizer

RECORD_VERSION = 1


def _check_out_dir(cfg: AblateConfig) -> None:
    """The destination guard: out_dir (results, plots, healing checkpoints) must not be,
    hold or lie inside the model, the tokenizer or a data file."""
    inputs = [resolve_model(str(cfg.model)), cfg.tokenizer]
    for name in ("eval_data", "calibration_data", "heal_data"):
        data = cfg.data_config(name)
        inputs += [p for p in (data.paths if data else []) if not any(c in p for c in "*?[")]
    check_overlap(cfg.out_dir, [p for p in inputs if p and Path(p).exists()], what="out_dir")


# -- records ---------------------------------------------------------------------------------
class Store:
    """out_dir/points/<key>.json records: {"version", "key", "settings", "record"}."""

    def __init__(self, out_dir: str | Path, *, overwrite: bool, writer: bool = True):
        self.dir = Path(out_dir) / "points"
        self.overwrite, self.writer = overwrite, writer

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str, settings: dict) -> dict | None:
        """The stored record of `key` if it was made with `settings`; None if absent (or
        stale and overwrite=true); a stale record otherwise is an error."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            stored, record = data["settings"], data["record"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # unreadable: recompute (writes are atomic, so only hand edits)
        if stored != jsonable(settings):
            if self.overwrite:
                return None
            changed = sorted(k for k in set(stored) | set(settings)
                             if stored.get(k) != jsonable(settings).get(k))
            raise SolarError(f"{path.parent.parent} holds results of a different setup "
                             f"({', '.join(changed)} changed); use another out_dir, or "
                             f"overwrite=true to recompute them")
        return record

    def put(self, key: str, settings: dict, record: dict) -> None:
        if self.writer:
            data = {"version": RECORD_VERSION, "key": key, "settings": settings,
                    "record": record}
            write_text_atomic(self.path(key), json.dumps(jsonable(data), indent=1) + "\n")


# -- data ------------------------------------------------------------------------------------
class RowSet:
    """Fixed packed rows of a PretrainDataset's layout, in batches of `batch_size` (the last
    padded with zero-weight copies, marked valid=0), each process getting its contiguous
    share of every global batch."""

    def __init__(self, dataset, rows, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
        self.dataset, self.rows = dataset, np.asarray(rows, np.int64)
        self.batch_size = batch_size
        self.process_index, self.process_count = process_index, process_count

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def batches(self) -> list[dict]:
        from solar_jax.data import pack_rows
        out = []
        b, local = self.batch_size, self.batch_size // self.process_count
        for start in range(0, len(self.rows), b):
            ids = self.rows[start:start + b]
            valid = np.ones(b, np.float32)
            if len(ids) < b:
                valid[len(ids):] = 0
                ids = np.concatenate([ids, np.full(b - len(ids), ids[0])])
            lo = self.process_index * local
            ids, valid = ids[lo:lo + local], valid[lo:lo + local]
            batch = pack_rows(self.dataset.stream, self.dataset.layout, ids)
            batch["loss_weights"] = batch["loss_weights"] * valid[:, None]
            batch["valid"] = valid
            out.append(batch)
        return out

    @property
    def num_tokens(self) -> int:
        """Target tokens (loss weights) in the set."""
        return int(sum(b["loss_weights"].sum() for b in self.batches()))


class RowStream:
    """Training batches over fixed rows: batch `step` is a pure function of (seed, step),
    reshuffled each epoch, this process's share of each global batch."""

    def __init__(self, dataset, rows, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.dataset, self.rows = dataset, np.asarray(rows, np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.process_count = process_index, process_count

    def batch(self, step: int) -> dict:
        from solar_jax.data import pack_rows
        n, b = len(self.rows), self.batch_size
        local = b // self.process_count
        index = step * b + self.process_index * local + np.arange(local)
        epoch, pos = np.divmod(index, n)
        ids = np.empty(local, np.int64)
        for e in np.unique(epoch):
            order = np.random.default_rng([self.seed, int(e)]).permutation(n)
            ids[epoch == e] = self.rows[order[pos[epoch == e]]]
        return pack_rows(self.dataset.stream, self.dataset.layout, ids)


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
    heal: object | None  # .batch(step) -> local dict, or None without healing
    heal_source: str


def build_data(cfg: AblateConfig, tokenizer, *, process_index: int = 0,
               process_count: int = 1) -> StudyData:
    from solar_jax.data import build_pretrain_dataset

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

    heal, source = None, ""
    if cfg.heal_tokens:
        if split:
            heal = RowStream(evals, np.arange(n_eval, evals.num_rows), cfg.heal_batch_size,
                             cfg.seed, **share)
            source = f"eval_data rows {n_eval}..{evals.num_rows - 1} (not held out)"
        else:
            heal = dataset("heal_data", cfg.heal_batch_size)
            source = "heal_data"
    return StudyData(eval_rows, calibration_rows, heal, source)


# -- the sweep -------------------------------------------------------------------------------
class _Runtime:
    """Mesh, shardings, compiled functions: what every candidate shares."""

    def __init__(self, cfg: AblateConfig, mesh, rules):
        from solar_jax.train import state as state_lib
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self.batch_sharding = state_lib.batch_sharding(mesh, rules)

    def place(self, local: dict) -> dict:
        from solar_jax.train.state import global_batch
        return global_batch(local, self.batch_sharding)

    def param_shardings(self, config):
        from solar_jax.model.transformer import abstract_params, logical_axes
        from solar_jax.sharding import param_shardings
        return param_shardings(abstract_params(config), logical_axes(config), self.mesh,
                               self.rules)

    def evaluate(self, config, params, rows: RowSet, chunk: int) -> dict:
        """Held-out loss (sum NLL / sum weights), perplexity and next-token accuracy."""
        fn = _eval_fn(config, chunk)
        nll = correct = weight = 0.0
        for local in rows.batches():
            out = jax.device_get(fn(params, self.place(local)))
            nll, correct, weight = nll + float(out[0]), correct + float(out[1]), \
                weight + float(out[2])
        if weight == 0:
            raise SolarError("the held-out set has no target tokens")
        loss = nll / weight
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": correct / weight,
                "tokens": int(weight)}


_EVAL_FNS: dict = {}
_STEP_FNS: dict = {}
_UPSCALE_FNS: dict = {}


def _eval_fn(config, chunk: int):
    from solar_jax.train.step import batch_loss_sums
    key = (config, chunk)
    if key not in _EVAL_FNS:
        def fn(params, batch):
            _, (nll, _, correct, weight) = batch_loss_sums(config, params, batch, chunk=chunk,
                                                           z_loss=0.0)
            return nll, correct, weight
        _EVAL_FNS[key] = jax.jit(fn)
    return _EVAL_FNS[key]


def _broadcast_flags(flags: list[bool]) -> list[bool]:
    """Process 0's view of which records exist (out_dir may be local to it)."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils
    arr = multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))
    return [bool(x) for x in np.asarray(arr)]


def heal(rt: _Runtime, config, params, tc, stream, *, ckpt_dir: str | None, log,
         settings: dict | None = None) -> tuple:
    """Continued pretraining of `params` for tc.steps steps with the training core's step
    (same optimizer, schedule, accumulation, non-finite guard). Returns (params, info).

    With rt.cfg.heal_checkpoint_every > 0 the state is checkpointed in `ckpt_dir` (orbax,
    the training core's RunCheckpointer) next to a settings.json; a later call with the
    same settings resumes from the latest step, a stale checkpoint is discarded."""
    from solar_jax.train import state as state_lib
    from solar_jax.train.optimizer import make_optimizer, make_schedule
    from solar_jax.train.step import BATCH_KEYS, compile_train_step, make_train_step

    # One compiled step per (architecture, settings, mesh): candidates with the same layer
    # count (and a resumed or repeated sweep in one process) reuse it.
    key = (config, json.dumps(dataclasses.asdict(tc), sort_keys=True, default=str), rt.mesh)
    if key not in _STEP_FNS:
        optimizer = make_optimizer(tc)
        state = state_lib.create_state(params, optimizer, rt.mesh)
        step_fn = compile_train_step(
            make_train_step(config, optimizer, make_schedule(tc), grad_accum=tc.grad_accum,
                            chunk=tc.loss_chunk, z_loss=tc.z_loss),
            state_lib.state_shardings(state), rt.batch_sharding, rules=rt.rules)
        _STEP_FNS[key] = (optimizer, step_fn)
    else:
        optimizer, step_fn = _STEP_FNS[key]
        state = state_lib.create_state(params, optimizer, rt.mesh)
    checkpointer, start = None, 0
    every = rt.cfg.heal_checkpoint_every
    if ckpt_dir is not None and every:
        from etils import epath

        from solar_jax.train.checkpoints import RunCheckpointer
        root = epath.Path(ckpt_dir)
        stamp = json.dumps(jsonable({"settings": settings, "config": config.to_dict()}),
                           sort_keys=True)
        if root.exists() and (not (root / "settings.json").exists()
                              or (root / "settings.json").read_text() != stamp):
            log(f"    discarding a healing checkpoint of another setup in {ckpt_dir}")
            if jax.process_index() == 0:
                root.rmtree()
        if jax.process_index() == 0 and not root.exists():
            root.mkdir(parents=True, exist_ok=True)
            (root / "settings.json").write_text(stamp)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("solar-jax ablate: heal checkpoint dir")
        checkpointer = RunCheckpointer(ckpt_dir, keep=1, async_save=False)
        latest = checkpointer.latest_step()
        if latest is not None:
            state, data_state, _ = checkpointer.restore(latest, state)
            start = int(data_state["step"])
            log(f"    resumed healing at step {start} from {ckpt_dir}")
    status, last_loss, done = "ok", None, start
    try:
        for step in range(start, tc.steps):
            local = stream.batch(step)
            batch = rt.place({k: local[k] for k in BATCH_KEYS})
            state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            if not metrics["finite"]:
                status = f"non-finite loss/gradient at step {step + 1}; stopped"
                break
            last_loss = float(metrics["loss"])
            done = step + 1
            if checkpointer is not None and (done % every == 0) and done < tc.steps:
                checkpointer.save(done, state, {"step": done}, {}, wait=True)
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return state["params"], {"heal_status": status, "heal_final_train_loss": last_loss,
                             "heal_steps": done}


def run_ablation(cfg: AblateConfig, *, log=None) -> dict:
    """Run (or resume) the study of `cfg`; returns the results dict (also written to
    out_dir as results.json, results.csv, report.md and the plots)."""
    from solar_jax.sharding import make_mesh
    from solar_jax.train import state as state_lib
    from solar_jax.train.loop import init_distributed

    cfg.validate()
    _check_out_dir(cfg)
    init_distributed(cfg.train_config())
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
    have = _broadcast_flags([diag is not None, base is not None]
                            + [records[p.key] is not None for p in points])
    params = None
    if not all(have):
        t0 = time.perf_counter()
        params = state_lib.create_params(config, source, mesh, state_lib.rules_for(tc),
                                         cfg.seed)
        log(f"loaded {source or cfg.model} ({time.perf_counter() - t0:.1f}s)")
    rt = _Runtime(cfg, mesh, state_lib.rules_for(tc))
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


def run_point(rt: _Runtime, cfg: AblateConfig, tc, config, params, point: Point,
              data: StudyData, chunk: int, out: Path, *, log, settings=None) -> dict:
    """Build one candidate on device, evaluate, heal, evaluate again."""
    from solar_jax.dus import upscale

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
        from etils import epath
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


