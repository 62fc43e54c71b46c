"""Running a task: score or generate for every document, then lm-eval's metrics, the
results dict (with every question, for question-by-question comparisons) and a table."""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from solar_jax.errors import SolarError, warn
from solar_jax.eval.scoring import Scorer
from solar_jax.eval.tasks import TASKS, GenDoc, MCDoc, load_docs, read_texts, task_spec
from solar_jax.generate import end_token_ids, generate, model_tokenizer

class Progress:
    """A one-line progress bar on stderr (no dependency; silent when disabled)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = max(total, 1), label, enabled
        self.done, self.start = 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        print(f"\r{self.label} [{bar}] {self.done}/{self.total} ({rate:.1f}/s)", end="",
              file=sys.stderr, flush=True)
        if self.done >= self.total:
            print(file=sys.stderr)


def _stderr(values) -> float:
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _multiple_choice(docs: list[MCDoc], scorer: Scorer, task: str) -> tuple[dict, list]:
    pairs = [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
    scores = scorer.loglikelihood(pairs)
    samples, at = [], 0
    for d in docs:
        got = scores[at:at + len(d.choices)]
        at += len(d.choices)
        lls = np.array([s[0] for s in got])
        pred = int(np.argmax(lls))
        lengths = np.array([float(len(c)) for c in d.choices])
        pred_norm = int(np.argmax(lls / lengths))
        sample = {"id": d.id, "question": d.question, **_contexts(d),
                  "choices": d.choices, "gold": d.gold,
                  "loglikelihoods": lls.tolist(), "is_greedy": [s[1] for s in got],
                  "pred": pred, "pred_norm": pred_norm,
                  "acc": float(pred == d.gold), "acc_norm": float(pred_norm == d.gold)}
        if d.labels is not None:
            # mc2: probability mass on the true answers, normalized over all answers
            # (lm-eval's exp/sum, computed stably as a softmax).
            probs = np.exp(lls - lls.max())
            probs /= probs.sum()
            sample["labels"] = d.labels
            sample["acc"] = float(probs[np.array(d.labels) == 1].sum())
        samples.append(sample)
    metrics = {m: float(np.mean([s[m] for s in samples])) for m in TASKS[task].metrics}
    metrics.update({f"{m}_stderr": _stderr([s[m] for s in samples]) for m in TASKS[task].metrics})
    return metrics, samples


def _contexts(d: MCDoc) -> dict:
    """The model's input: one context shared by every choice, or one per choice
    (winogrande puts the choice in the context)."""
    if all(c == d.contexts[0] for c in d.contexts):
        return {"context": d.contexts[0]}
    return {"contexts": d.contexts}


PREVIEW_CHARS = 200  # a perplexity document can be a whole corpus: its start only

GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def extract_answer(text: str, flexible: bool = False) -> str:
    """lm-eval's gsm8k filters: strict '#### N' (first match) or flexible (last number)."""
    found = (FLEXIBLE if flexible else STRICT).findall(text)
    if not found:
        return "[invalid]"
    match = found[-1] if flexible else found[0]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def normalize_answer(text: str) -> str:
    """lm-eval's exact_match with gsm8k's regexes_to_ignore and ignore_case."""
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def _generation(docs: list[GenDoc], model, tokenizer, batch_size: int, max_gen_tokens: int,
                max_length: int, progress: Progress) -> tuple[dict, list]:
    stops = tuple(dict.fromkeys(GSM8K_STOPS + ((tokenizer.eos_token,)
                                               if tokenizer.eos_token else ())))
    # lm-eval keeps the last max_length - max_gen_toks tokens of the context.
    budget = max_length - max_gen_tokens
    if budget < 1:
        raise SolarError(f"max-gen-tokens {max_gen_tokens} leaves no room for a prompt in "
                         f"the context of {max_length} tokens")
    prompts = [tokenizer.encode(d.prompt, add_special_tokens=False)[-budget:] for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -len(prompts[i]))
    texts: list[str] = [""] * len(docs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # Pad the batch with copies so every batch has one shape (one compiled program).
        batch = [prompts[i] for i in idx] + [prompts[idx[0]]] * (batch_size - len(idx))
        outs = generate(model, batch, max_gen_tokens, stop=stops, tokenizer=tokenizer,
                        end_ids=end_token_ids(model, tokenizer), max_length=max_length)
        for i, out in zip(idx, outs):
            texts[i] = out.text
        progress.update(len(idx))
    samples = []
    for d, text in zip(docs, texts):
        target = normalize_answer(d.target)
        strict, flexible = extract_answer(text), extract_answer(text, flexible=True)
        samples.append({"id": d.id, "question": d.question, "prompt": d.prompt,
                        "target": d.target, "generation": text,
                        "extracted": strict, "extracted_flexible": flexible,
                        "exact_match": float(normalize_answer(strict) == target),
                        "exact_match_flexible": float(normalize_answer(flexible) == target)})
    metrics = {m: float(np.mean([s[m] for s in samples])) for m in TASKS["gsm8k"].metrics}
    metrics.update({f"{m}_stderr": _stderr([s[m] for s in samples])
                    for m in TASKS["gsm8k"].metrics})
    return metrics, samples


def _perplexity(texts: list[str], scorer: Scorer) -> tuple[dict, list]:
    results = scorer.rolling_loglikelihood(texts)
    ll = sum(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    if not tokens:
        raise SolarError("the perplexity data has no text to score")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(re.split(r"\s+", t)) for t in texts)  # lm-eval's word count
    metrics = {"perplexity": math.exp(-ll / tokens), "byte_perplexity": math.exp(-ll / n_bytes),
               "bits_per_byte": -ll / n_bytes / math.log(2),
               "word_perplexity": math.exp(-ll / words),
               "tokens": tokens, "bytes": n_bytes, "words": words, "loglikelihood": ll}
    samples = [{"id": str(i), "text": t[:PREVIEW_CHARS] + ("..." if len(t) > PREVIEW_CHARS else ""),
                "loglikelihood": r[0], "tokens": r[1]}
               for i, (t, r) in enumerate(zip(texts, results))]
    return metrics, samples


def evaluate(model, task: str, data: str | Path, *, limit: int | None = None,
             num_fewshot: int | None = None, fewshot_data: str | Path | None = None,
             batch_size: int = 16, max_length: int | None = None, max_gen_tokens: int = 256,
             tokenizer=None, progress: bool = False) -> dict:
    """Run `task` on the records in `data`; returns the results dict (metrics by name,
    `task`, `n`, settings, and `samples`: every question with its scores)."""
    spec = task_spec(task)
    if limit is not None and limit < 1:
        raise SolarError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise SolarError(f"batch-size must be at least 1, got {batch_size}")
    tokenizer = tokenizer or model_tokenizer(model)
    context = model.config.max_position_embeddings
    if max_length is not None and max_length > context:
        warn(f"max-length {max_length} is above the model's context of {context} tokens; "
             f"using {context}")
        max_length = context
    max_length = max_length or context
    started = time.perf_counter()
    if spec.kind == "perplexity":
        docs = read_texts(data, limit)
    else:
        docs = load_docs(task, data, num_fewshot=num_fewshot, fewshot_path=fewshot_data,
                         limit=limit)
    total = sum(len(d.choices) for d in docs) if spec.kind == "mc" else len(docs)
    bar = Progress(total, task, enabled=progress)
    scorer = Scorer(model, tokenizer, batch_size=batch_size, max_length=max_length,
                    progress=bar if spec.kind == "mc" else None)
    if spec.kind == "mc":
        metrics, samples = _multiple_choice(docs, scorer, task)
    elif spec.kind == "gen":
        metrics, samples = _generation(docs, model, tokenizer, batch_size, max_gen_tokens,
                                       max_length, bar)
    else:
        metrics, samples = _perplexity(docs, scorer)
        bar.update(len(docs))
    k = None if spec.kind == "perplexity" else (
        spec.default_fewshot if num_fewshot is None else num_fewshot)
    return {"task": task, "n": len(docs), **metrics, "num_fewshot": k,
            "data": str(data), "limit": limit, "batch_size": batch_size,
            "max_length": max_length, "seconds": round(time.perf_counter() - started, 3),
            "samples": samples}


def format_table(results: dict) -> str:
    """A small Markdown table of the metrics of one results dict."""
    spec = TASKS[results["task"]]
    lines = ["| task | n | metric | value | stderr |", "|---|---:|---|---:|---:|"]
    for m in spec.metrics:
        err = results.get(f"{m}_stderr")
        lines.append(f"| {results['task']} | {results['n']} | {m} | {results[m]:.4f} | "
                     f"{'' if err is None else f'{err:.4f}'} |")
    return "\n".join(lines)
