"""Benchmark tasks from local files, with lm-evaluation-harness's prompts.

Each task reads its usual release format and produces documents: `MCDoc` (multiple choice
scored by log-likelihood) or `GenDoc` (GSM8K, scored by exact match on a generation).
Prompts follow lm-eval's task YAMLs (v0.4): few-shot examples are
`doc_to_text + " " + target` joined and followed by "\n\n"; a choice is scored as the
continuation `" " + choice` of its context (target_delimiter " ").

Bad input is a SolarError that names the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import re
from pathlib import Path
from typing import Callable

from solar_jax.errors import SolarError
from solar_jax.eval.records import Record, bad, field, read_csv, read_jsonl, read_text

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


@dataclasses.dataclass
class MCDoc:
    id: str
    contexts: list[str]        # one per choice (winogrande: the choice is in the context)
    continuations: list[str]   # one per choice
    choices: list[str]         # lm-eval's doc_to_choice strings (acc_norm divides by len)
    gold: int
    labels: list[int] | None = None  # truthfulqa_mc2: 1 for each true answer
    question: str = ""  # the document's own text, without the few-shot examples


@dataclasses.dataclass
class GenDoc:
    id: str
    prompt: str
    target: str
    question: str = ""  # the document's own text, without the few-shot examples


# ---- few-shot ---------------------------------------------------------------------------------


def fewshot_prefix(pool: list, k: int, exclude, rnd: random.Random,
                   shot: Callable[[Record], str], first_n: bool = False) -> str:
    """k solved examples joined by blank lines, then a blank line ("" when k == 0).

    As lm-eval: from a separate few-shot file, k examples (the first k, or sampled); from
    the evaluated file itself, k + 1 are drawn and the evaluated document is dropped."""
    if k <= 0:
        return ""
    n = k + (exclude is not None)
    candidates = pool[:n] if first_n else rnd.sample(pool, min(n, len(pool)))
    chosen = [d for d in candidates if d is not exclude][:k]
    return "\n\n".join(shot(d) for d in chosen) + "\n\n"


Prefix = Callable[[Record, Callable[[Record], str]], str]


# ---- multiple-choice tasks ------------------------------------------------------------------


def _mc(doc_id, context: str, choices: list[str], gold: int, labels=None,
        question: str = "") -> MCDoc:
    return MCDoc(doc_id, [context] * len(choices), [" " + c for c in choices], choices, gold,
                 labels, question)


def arc_docs(records, prefix: Prefix):
    """ARC / OpenBookQA JSONL: question.stem, question.choices[{text,label}], answerKey
    (also the HF layout: question, choices{text,label}, answerKey)."""
    def parse(rec):
        q = field(rec, "question")
        if isinstance(q, dict):
            stem = field(rec, "question", "stem", kind=str)
            options = field(rec, "question", "choices", kind=list)
            try:
                texts = [str(c["text"]) for c in options]
                labels = [str(c["label"]) for c in options]
            except (KeyError, TypeError):
                raise bad(rec, "each of question.choices needs text and label") from None
        else:
            stem = q
            texts = [str(t) for t in field(rec, "choices", "text", kind=list)]
            labels = [str(t) for t in field(rec, "choices", "label", kind=list)]
        key = str(field(rec, "answerKey")).strip()
        if key not in labels:
            raise bad(rec, f"answerKey {key!r} is not one of the labels {labels}")
        return f"Question: {stem}\nAnswer:", texts, labels.index(key)

    shot = lambda r: (lambda c, t, g: f"{c} {t[g]}")(*parse(r))
    out = []
    for i, rec in enumerate(records):
        context, texts, gold = parse(rec)
        out.append(_mc(str(rec.get("id", i)), prefix(rec, shot) + context, texts, gold,
                       question=context))
    return out


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artifacts, as lm-eval strips them
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(records, prefix: Prefix):
    """HellaSwag JSONL: activity_label, ctx_a, ctx_b, endings, label."""
    def parse(rec):
        ctx = field(rec, "ctx_a", kind=str) + " " + field(rec, "ctx_b", kind=str).capitalize()
        query = _hellaswag_clean(field(rec, "activity_label", kind=str) + ": " + ctx)
        endings = [_hellaswag_clean(str(e)) for e in field(rec, "endings", kind=list)]
        try:
            gold = int(field(rec, "label"))
        except (TypeError, ValueError):
            raise bad(rec, "label must be an integer") from None
        if not 0 <= gold < len(endings):
            raise bad(rec, f"label {gold} is out of range for {len(endings)} endings")
        return query, endings, gold

    shot = lambda r: (lambda q, e, g: f"{q} {e[g]}")(*parse(r))
    out = []
    for i, rec in enumerate(records):
        query, endings, gold = parse(rec)
        out.append(_mc(str(rec.get("ind", i)), prefix(rec, shot) + query, endings, gold,
                       question=query))
    return out


def winogrande_docs(records, prefix: Prefix):
    """Winogrande JSONL: sentence (with one "_"), option1, option2, answer ("1"/"2").
    Partial scoring: the option fills the blank in the context and the log-likelihood of
    the rest of the sentence (the same for both) decides."""
    def parse(rec):
        sentence = field(rec, "sentence", kind=str)
        if "_" not in sentence:
            raise bad(rec, "sentence has no '_' blank")
        idx = sentence.index("_")
        options = [str(field(rec, "option1")), str(field(rec, "option2"))]
        answer = str(field(rec, "answer")).strip()
        if answer not in ("1", "2"):
            raise bad(rec, f"answer must be '1' or '2', got {answer!r}")
        contexts = [sentence[:idx] + o for o in options]
        return contexts, sentence[idx + 1:].strip(), int(answer) - 1

    shot = lambda r: (lambda c, t, g: f"{c[g]} {t}")(*parse(r))
    out = []
    for i, rec in enumerate(records):
        contexts, target, gold = parse(rec)
        head = prefix(rec, shot)
        out.append(MCDoc(str(rec.get("qID", i)), [head + c for c in contexts],
                         [" " + target] * 2, contexts, gold,
                         question=field(rec, "sentence", kind=str)))
    return out


MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def mmlu_subject(path: Path) -> str:
    """'high_school_physics_test.csv' -> 'high school physics' (lm-eval's description)."""
    return re.sub(r"_(test|dev|val)$", "", path.stem).replace("_", " ")


def read_mmlu(path: Path) -> list[Record]:
    """MMLU CSV as released (no header: question, A, B, C, D, answer letter), or with a
    header row naming those columns (any case)."""
    first = next(csv.reader(read_text(path).splitlines()[:1]), [])
    canon = {c.lower(): c for c in MMLU_COLUMNS}
    has_header = [c.strip().lower() for c in first] == list(canon)
    records = read_csv(path, None if has_header else MMLU_COLUMNS)
    for rec in records:
        renamed = {canon.get(k.lower(), k): v for k, v in rec.items()}
        rec.clear()
        rec.update(renamed)
    return records


def mmlu_docs(records, prefix: Prefix, subject: str):
    def parse(rec):
        q = field(rec, "question", kind=str)
        options = [field(rec, letter, kind=str) for letter in "ABCD"]
        answer = field(rec, "answer", kind=str).strip()
        gold = "ABCD".find(answer.upper()) if len(answer) == 1 and answer.isalpha() else (
            int(answer) if answer.isdigit() else -1)
        if not 0 <= gold < 4:
            raise bad(rec, f"answer must be A-D (or 0-3), got {answer!r}")
        text = (f"{q.strip()}\nA. {options[0]}\nB. {options[1]}\nC. {options[2]}\n"
                f"D. {options[3]}\nAnswer:")
        return text, gold

    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    shot = lambda r: (lambda t, g: f"{t} {'ABCD'[g]}")(*parse(r))
    out = []
    for i, rec in enumerate(records):
        text, gold = parse(rec)
        out.append(_mc(str(i), description + prefix(rec, shot) + text, list("ABCD"), gold,
                       question=text))
    return out


TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")


def _tqa_answers(text: str) -> list[str]:
    """TruthfulQA.csv's '; '-separated answers, each closed with a period as in the
    TruthfulQA repository's split_multi_answer."""
    out = []
    for a in text.strip().split(";"):
        a = a.strip()
        if a:
            out.append(a if a.endswith(".") else a + ".")
    return out


def _tqa_targets(rec: Record, name: str) -> tuple[list[str], list[int]]:
    targets = field(rec, name, kind=dict)
    if "choices" in targets and "labels" in targets:      # HF datasets layout
        choices, labels = list(targets["choices"]), [int(x) for x in targets["labels"]]
    else:                                                 # mc_task.json: {answer: label}
        choices, labels = list(targets), [int(v) for v in targets.values()]
    if not choices or len(choices) != len(labels) or 1 not in labels:
        raise bad(rec, f"{name} needs choices with at least one true label")
    return [str(c) for c in choices], labels


def truthfulqa_docs(records, mc2: bool):
    out = []
    for i, rec in enumerate(records):
        if "mc1_targets" in rec or "mc2_targets" in rec:
            question = field(rec, "question", kind=str)
            choices, labels = _tqa_targets(rec, "mc2_targets" if mc2 else "mc1_targets")
            if not mc2 and labels[0] != 1:
                raise bad(rec, "mc1_targets must list the correct answer first")
        else:
            question = field(rec, "Question", kind=str)
            best = field(rec, "Best Answer", kind=str).strip()
            best = best if best.endswith(".") else best + "."
            true = _tqa_answers(field(rec, "Correct Answers", kind=str))
            false = _tqa_answers(field(rec, "Incorrect Answers", kind=str))
            if not best or not false:
                raise bad(rec, "needs a Best Answer and Incorrect Answers")
            if mc2:
                choices, labels = true + false, [1] * len(true) + [0] * len(false)
            else:
                choices, labels = [best] + false, [1] + [0] * len(false)
        context = TRUTHFULQA_PREAMBLE + "\n\nQ: " + question + "\nA:"
        out.append(_mc(str(i), context, choices, 0, labels if mc2 else None,
                       question=question))
    return out


# ---- GSM8K --------------------------------------------------------------------------------


def gsm8k_docs(records, prefix: Prefix):
    """GSM8K JSONL: question, answer (worked solution ending in '#### N')."""
    def parse(rec):
        return f"Question: {field(rec, 'question', kind=str)}\nAnswer:", \
            field(rec, "answer", kind=str)

    shot = lambda r: (lambda t, a: f"{t} {a}")(*parse(r))
    out = []
    for i, rec in enumerate(records):
        text, answer = parse(rec)
        if "####" not in answer:
            raise bad(rec, "answer has no '#### N' final answer")
        out.append(GenDoc(str(i), prefix(rec, shot) + text, answer, question=text))
    return out


# ---- registry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                 # "mc", "gen" or "perplexity"
    metrics: tuple[str, ...]
    default_fewshot: int = 0


TASKS = {
    "arc": TaskSpec("arc", "mc", ("acc", "acc_norm")),
    "hellaswag": TaskSpec("hellaswag", "mc", ("acc", "acc_norm")),
    "winogrande": TaskSpec("winogrande", "mc", ("acc",)),
    "mmlu": TaskSpec("mmlu", "mc", ("acc", "acc_norm")),
    "truthfulqa_mc1": TaskSpec("truthfulqa_mc1", "mc", ("acc",)),
    "truthfulqa_mc2": TaskSpec("truthfulqa_mc2", "mc", ("acc",)),
    "gsm8k": TaskSpec("gsm8k", "gen", ("exact_match", "exact_match_flexible"), 5),
    "perplexity": TaskSpec("perplexity", "perplexity",
                           ("perplexity", "byte_perplexity", "bits_per_byte",
                            "word_perplexity")),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise SolarError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]


def _read_records(task: str, path: Path) -> list[Record]:
    if task == "mmlu":
        return read_mmlu(path)
    if task.startswith("truthfulqa") and path.suffix == ".csv":
        return read_csv(path)
    return read_jsonl(path)


def _mmlu_dev_file(path: Path) -> Path | None:
    """The dev split beside a test file, in the layouts MMLU ships (data/dev, data/test)."""
    stem = re.sub(r"_(test|val)$", "", path.stem)
    for folder in (path.parent, path.parent.parent / "dev"):
        candidate = folder / f"{stem}_dev.csv"
        if candidate.is_file() and candidate != path:
            return candidate
    return None


def load_docs(task: str, path: str | Path, *, num_fewshot: int | None = None,
              fewshot_path: str | Path | None = None, limit: int | None = None):
    """The task's documents from `path` (the first `limit` of them), with few-shot examples
    drawn from `fewshot_path` (default: the whole of the same file, never the evaluated
    document itself). As lm-eval's --limit, `limit` cuts the evaluated documents only: the
    first N prompts are the same as the first N of a full run."""
    spec = task_spec(task)
    if spec.kind == "perplexity":
        raise SolarError("perplexity reads plain text; use read_texts")
    path = Path(path)
    k = spec.default_fewshot if num_fewshot is None else num_fewshot
    if k < 0:
        raise SolarError(f"num-fewshot must be >= 0, got {k}")
    if task.startswith("truthfulqa") and k:
        raise SolarError("truthfulqa has its fixed six-shot preamble; use --num-fewshot 0")
    records = _read_records(task, path)
    if not records:
        raise SolarError(f"data file {path} has no records")
    if task == "mmlu" and fewshot_path is None and k:
        fewshot_path = _mmlu_dev_file(path)
    pool = records if fewshot_path is None else _read_records(task, Path(fewshot_path))
    if limit is not None:
        records = records[:max(limit, 0)]
    if k and len(pool) < k + (fewshot_path is None):
        raise SolarError(f"{k}-shot needs at least {k + 1} examples to draw from, "
                         f"have {len(pool)}; pass --fewshot-data")
    rnd = random.Random(FEWSHOT_SEED)
    same_file = fewshot_path is None
    first_n = task == "mmlu"  # lm-eval's MMLU takes the first k dev questions (first_n)

    def prefix(rec: Record, shot: Callable[[Record], str]) -> str:
        return fewshot_prefix(pool, k, rec if same_file else None, rnd, shot, first_n)

    if task == "arc":
        return arc_docs(records, prefix)
    if task == "hellaswag":
        return hellaswag_docs(records, prefix)
    if task == "winogrande":
        return winogrande_docs(records, prefix)
    if task == "mmlu":
        return mmlu_docs(records, prefix, mmlu_subject(path))
    if task in ("truthfulqa_mc1", "truthfulqa_mc2"):
        return truthfulqa_docs(records, mc2=task.endswith("mc2"))
    return gsm8k_docs(records, prefix)


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Documents for perplexity: a .jsonl of {"text": ...} records, or one plain text file."""
    path = Path(path)
    if path.suffix == ".jsonl":
        texts = [field(rec, "text", kind=str) for rec in read_jsonl(path)]
    else:
        texts = [read_text(path)]
    return texts[:limit] if limit is not None else texts
