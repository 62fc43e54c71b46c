"""The paper-style table of candidates: `solar-jax report RUN_DIR...`.

    from solar_jax.report import collect, format_report
    print(format_report(collect(["runs/sft_v1", "runs/sft_v3", "models/sft_v3_v4"])))

One row per directory, like SOLAR's ablation tables: what it was trained on (or merged
from), how long, the final training loss, held-out perplexity and held-out GSM8K exact
match. Where each value comes from:

* a training run (`metrics.jsonl` or `checkpoints/`): its config from the latest
  checkpoint's run record (objective, start model, `data.path` or the `data.mixture`
  sources with their weights and limits); `steps` and `train loss` from the last step
  logged in metrics.jsonl (else final_metrics.json / the latest checkpoint's step); the
  last logged `eval/perplexity/perplexity` (the held-out text, an eval task; else
  `eval/perplexity`) and `eval/gsm8k/exact_match_flexible` (and `eval/gsm8k/n`);
* a merged or up-scaled model (a model folder with `mergekit_config.yml`, which merge and
  upscale write beside their output): its parents, weights and method from that recipe;
* any model folder (solar-jax checkpoint or Hugging Face): a row with only its eval numbers;
* in any of these, `eval_results.json` / `eval_results_*.json` (what `solar-jax eval --out`
  writes: one task's results, a list of them, or a mapping task -> results), and with
  `eval_dir` the same files in `eval_dir/<name>/` (`solar-jax eval` may not write inside
  the model it reads, so a merge's results live beside it, not in it), win over
  metrics.jsonl for the eval numbers: task `perplexity` gives the held-out perplexity,
  task `gsm8k` the exact match (flexible-extract, lm-eval's headline) and its n.

A missing value is an empty cell, never an error; a directory that is neither a run nor a
model is a one-line error, as is an eval results file that is not valid JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import yaml

from solar_jax.checkpoint.solar_format import _read_run_record
from solar_jax.errors import SolarError

FORMATS = ("markdown", "csv", "json")
COLUMNS = ("candidate", "stage", "from", "data", "steps", "train_loss", "eval_perplexity",
           "gsm8k_exact_match", "gsm8k_n")
HEADERS = {"candidate": "candidate", "stage": "stage", "from": "from", "data": "data",
           "steps": "steps", "train_loss": "train loss", "eval_perplexity": "held-out ppl",
           "gsm8k_exact_match": "GSM8K EM", "gsm8k_n": "GSM8K n"}
_DIGITS = {"train_loss": 4, "eval_perplexity": 3, "gsm8k_exact_match": 4}
METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "mergekit_config.yml"  # = solar_jax.recipes.RECIPE_FILE (mergekit's name)
_EXTENSIONS = re.compile(r"(\.(gz|jsonl|json|txt|text|parquet|csv))+$", re.IGNORECASE)


@dataclasses.dataclass
class Candidate:
    candidate: str  # the directory's name
    path: str
    kind: str  # run | merge | upscale | model
    stage: str = ""  # lm, sft, dpo (sigmoid), merge (linear), upscale, model
    start: str = ""  # a run's starting model (`from`)
    data: str = ""  # the one-cell summary of `sources` / `parents`
    sources: list = dataclasses.field(default_factory=list)  # a run's data sources
    parents: list = dataclasses.field(default_factory=list)  # a merge's models
    method: str | None = None
    steps: int | None = None
    train_loss: float | None = None
    eval_perplexity: float | None = None
    gsm8k_exact_match: float | None = None
    gsm8k_n: int | None = None
    eval: dict = dataclasses.field(default_factory=dict)  # last logged eval/* metrics
    eval_results: dict = dataclasses.field(default_factory=dict)  # task -> numeric results

    def row(self) -> dict:
        return {c: getattr(self, "start" if c == "from" else c) for c in COLUMNS}

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["from"] = out.pop("start")
        return out


def collect(paths, eval_dir: str | Path | None = None) -> list[Candidate]:
    """One Candidate per path, in order (see the module docstring). `eval_dir`: a folder
    of `<candidate name>/eval_results*.json` read as well."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise SolarError("give at least one run directory or model")
    if eval_dir is not None and not Path(eval_dir).is_dir():
        raise SolarError(f"eval_dir {eval_dir} is not a directory")
    return [read_candidate(p, eval_dir) for p in paths]


def read_candidate(path: str | Path, eval_dir: str | Path | None = None) -> Candidate:
    path = Path(path)
    if not path.exists():
        raise SolarError(f"{path} does not exist")
    name = path.name or path.resolve().name
    if path.is_file():
        if path.suffix == ".gguf":
            return Candidate(name, str(path), "model", stage="model")
        raise SolarError(f"{path} is a file, not a run directory or a model")
    is_run = (path / METRICS_FILE).is_file() or (path / "checkpoints").is_dir()
    is_model = (path / "solar_config.json").is_file() or (path / "config.json").is_file()
    if not (is_run or is_model):
        raise SolarError(f"{path} is neither a training run (no {METRICS_FILE} or "
                         f"checkpoints/) nor a model (no solar_config.json or config.json)")
    cand = Candidate(name, str(path), "run" if is_run else "model",
                     stage="" if is_run else "model")
    if is_run:
        _fill_run(cand, path)
    elif (path / RECIPE_FILE).is_file():
        _fill_merge(cand, path / RECIPE_FILE)
    _fill_eval_results(cand, path)
    if eval_dir is not None and (Path(eval_dir) / name).is_dir():
        _fill_eval_results(cand, Path(eval_dir) / name)
    return cand


# ---- training runs ----------------------------------------------------------------------


def _fill_run(cand: Candidate, path: Path) -> None:
    config, ckpt_step = _run_config(path)
    if config:
        objective = config.get("objective") or ""
        loss = (config.get("dpo") or {}).get("loss")
        cand.stage = f"{objective} ({loss})" if objective == "dpo" and loss else objective
        cand.start = _short(config.get("model"))
        cand.sources = data_sources(config.get("data") or {})
        cand.data = describe_sources(cand.sources)
    records = read_metrics(path / METRICS_FILE)
    train = [r for r in records if _number(r.get("loss")) is not None and "step" in r]
    if train:
        last = max(train, key=lambda r: r["step"])  # max picks the first of equal steps
        last = [r for r in train if r["step"] == last["step"]][-1]  # ... so take the latest
        cand.steps, cand.train_loss = int(last["step"]), float(last["loss"])
    elif (path / "final_metrics.json").is_file():
        final = _load_json(path / "final_metrics.json")
        cand.steps = final.get("step") if isinstance(final.get("step"), int) else None
        cand.train_loss = _number(final.get("loss"))
    if cand.steps is None:
        cand.steps = ckpt_step
    for record in records:  # later evaluations overwrite earlier ones
        cand.eval.update({k: v for k, v in record.items()
                          if k.startswith("eval/") and _number(v) is not None})
    ppl_task, gsm8k = _task_label(config, "perplexity"), _task_label(config, "gsm8k")
    # The held-out text's perplexity (an eval task) first: every candidate has it, merges
    # included (their eval_results files), so the column compares like with like; a run's
    # `eval/perplexity` is over its own eval_data (an SFT run's held-out answers).
    ppl = cand.eval.get(f"eval/{ppl_task}/perplexity", cand.eval.get("eval/perplexity"))
    cand.eval_perplexity = _number(ppl)
    cand.gsm8k_exact_match = _number(cand.eval.get(f"eval/{gsm8k}/exact_match_flexible"))
    n = _number(cand.eval.get(f"eval/{gsm8k}/n"))
    cand.gsm8k_n = int(n) if n is not None else None


def _task_label(config: dict, task: str) -> str:
    """The metric prefix a run's eval task logs under: its `name`, else the task itself."""
    for entry in config.get("eval_tasks") or []:
        if isinstance(entry, dict) and entry.get("task") == task:
            return entry.get("name") or task
    return task


def _run_config(path: Path) -> tuple[dict, int | None]:
    """(the run config saved with the latest checkpoint, that step); ({}, None) if none."""
    root = path / "checkpoints"
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and
                    (p / "run").is_dir()), reverse=True) if root.is_dir() else []
    for step in steps:
        try:
            record = _read_run_record(root / str(step) / "run")
        except SolarError:
            continue
        return (record.get("config") or {}), step
    return {}, None


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def data_sources(data: dict) -> list[dict]:
    """A run's `data` section as sources: name, paths, format, weight, limit, fraction."""
    def source(raw: dict, weight) -> dict:
        paths = _paths(raw.get("path"))
        return {"name": raw.get("name") or source_name(paths), "paths": paths,
                "format": raw.get("format", data.get("format")), "weight": weight,
                "limit": raw.get("limit"), "fraction": raw.get("fraction")}

    mixture = data.get("mixture")
    if isinstance(mixture, list) and mixture:
        return [source(raw, _number(raw.get("weight", 1.0))) for raw in mixture
                if isinstance(raw, dict)]
    if not _paths(data.get("path")):
        return []
    return [source(data, None)]


def describe_sources(sources: list[dict]) -> str:
    """`instructions 0.7 + math 0.3 (first 500)`; one source: just its name."""
    parts = []
    for s in sources:
        text = s["name"]
        if s["weight"] is not None and len(sources) > 1:
            text += f" {s['weight']:g}"
        if s.get("limit"):
            text += f" (first {s['limit']})"
        elif s.get("fraction"):
            text += f" (first {100 * s['fraction']:g}%)"
        parts.append(text)
    return " + ".join(parts)


def source_name(paths: list[str]) -> str:
    """`data/alpaca_gpt4.jsonl` -> `alpaca_gpt4` (a list: the names joined by +)."""
    return "+".join(_EXTENSIONS.sub("", Path(p.rstrip("/")).name) or p for p in paths)


# ---- merged and up-scaled models --------------------------------------------------------


def _fill_merge(cand: Candidate, recipe_path: Path) -> None:
    try:
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
    except yaml.YAMLError:
        raise SolarError(f"{recipe_path} is not valid YAML") from None
    if not isinstance(recipe, dict):
        raise SolarError(f"{recipe_path} is not a merge recipe")
    method = str(recipe.get("merge_method", ""))
    params = recipe.get("parameters") or {}
    entries = recipe.get("models") or [src for s in recipe.get("slices") or []
                                       if isinstance(s, dict) for src in s.get("sources") or []]
    parents = []
    for entry in entries:
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            continue
        weight = _number((entry.get("parameters") or {}).get("weight"))
        parents.append({"model": str(entry.get("model", "")), "weight": weight,
                        "layer_range": entry.get("layer_range")})
    base = recipe.get("base_model")
    cand.kind = "upscale" if method == "passthrough" else "merge"
    cand.method, cand.parents = method, parents
    cand.stage = "upscale" if method == "passthrough" else f"merge ({method})"
    names = [_short(p["model"]) for p in parents]
    if method == "passthrough":
        cand.data = " + ".join(f"{n} {p['layer_range']}" if p["layer_range"] else n
                               for n, p in zip(names, parents))
    elif method == "slerp":
        cand.data = " -> ".join(names) + (f" (t={params['t']:g})"
                                          if _number(params.get("t")) is not None else "")
    else:
        cand.data = " + ".join(f"{n} {p['weight']:g}" if p["weight"] is not None else n
                               for n, p in zip(names, parents))
    if base and method != "passthrough":
        cand.start = _short(base)


# ---- eval results -----------------------------------------------------------------------


def _fill_eval_results(cand: Candidate, path: Path) -> None:
    files = sorted(path.glob("eval_results*.json"))
    for f in files:
        for result in _results_in(f):
            cand.eval_results[str(result["task"])] = {
                k: v for k, v in result.items() if k != "task" and _number(v) is not None}
    ppl = cand.eval_results.get("perplexity", {}).get("perplexity")
    if ppl is not None:
        cand.eval_perplexity = float(ppl)
    gsm8k = cand.eval_results.get("gsm8k", {})
    if gsm8k.get("exact_match_flexible") is not None:
        cand.gsm8k_exact_match = float(gsm8k["exact_match_flexible"])
        cand.gsm8k_n = int(gsm8k["n"]) if gsm8k.get("n") is not None else None


def _results_in(path: Path) -> list[dict]:
    data = _load_json(path)
    if isinstance(data, dict) and "task" in data:
        items = [data]
    elif isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        items = [{"task": k, **v} for k, v in data.items() if isinstance(v, dict)]
    else:
        items = []
    if not items or not all(isinstance(r, dict) and "task" in r for r in items):
        raise SolarError(f"{path} is not an eval results file (solar-jax eval --out writes "
                         f"one: a results mapping with a `task`)")
    return items


# ---- output -----------------------------------------------------------------------------


def format_report(candidates: list[Candidate], fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise SolarError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([c.to_json() for c in candidates], indent=1)
    rows = [c.row() for c in candidates]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
        return buf.getvalue().rstrip("\n")
    numeric = {"steps", "train_loss", "eval_perplexity", "gsm8k_exact_match", "gsm8k_n"}
    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c, r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column in _DIGITS and isinstance(value, float):
        return f"{value:.{_DIGITS[column]}f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


# ---- helpers ----------------------------------------------------------------------------


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SolarError(f"{path} is not valid JSON ({e})") from None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return []


def _short(model) -> str:
    """A model's display name: a preset name as is, a path by its last component."""
    if not model:
        return ""
    text = str(model).rstrip("/")
    return Path(text).name if "/" in text or Path(text).exists() else text
