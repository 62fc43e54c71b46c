"""Instruction records -> chat messages -> token ids with a loss mask on assistant tokens.

Record formats (`data.format`): alpaca (instruction, input, output), openorca
(system_prompt, question, response), gsm8k (question, answer), chat (messages of
role/content), prompt_completion (prompt, completion). Templates: SOLAR-Instruct's
(`data.chat_template: solar`, default) or the tokenizer's own (`tokenizer`), both rendered
through solar_jax.chat_template, the definition inference uses.

Loss goes on every assistant turn's tokens and what ends the turn (EOS), nothing else. The
conversation is rendered once; each turn's prompt (rendered up to that answer) must be a
prefix of its tokens, otherwise the boundary would be ambiguous and the record is rejected
by name.
"""

from __future__ import annotations

from typing import Any

from solar_jax.chat_template import render_ids, template_text
from solar_jax.data.config import SFT_FORMATS
from solar_jax.errors import SolarError

ROLES = ("system", "user", "assistant")


def _text(where: str, record: dict, key: str, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise SolarError(f"{where}: record has no field {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise SolarError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
    return value


def check_messages(where: str, messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise SolarError(f"{where}: messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SolarError(f"{where}: message {i} needs a role ({'/'.join(ROLES)}) and string content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def record_messages(where: str, record: dict, fmt: str, system: str | None = None) -> list[dict]:
    """The conversation a record describes, ending with the assistant's answer."""
    if fmt == "alpaca":
        user = _text(where, record, "instruction")
        extra = _text(where, record, "input", required=False)
        messages = [{"role": "user", "content": f"{user}\n\n{extra}" if extra.strip() else user},
                    {"role": "assistant", "content": _text(where, record, "output")}]
    elif fmt == "openorca":
        messages = [{"role": "system", "content": _text(where, record, "system_prompt", required=False)},
                    {"role": "user", "content": _text(where, record, "question")},
                    {"role": "assistant", "content": _text(where, record, "response")}]
    elif fmt == "gsm8k":
        messages = [{"role": "user", "content": _text(where, record, "question")},
                    {"role": "assistant", "content": _text(where, record, "answer")}]
    elif fmt == "chat":
        messages = check_messages(where, record.get("messages"))
    elif fmt == "prompt_completion":
        messages = [{"role": "user", "content": _text(where, record, "prompt")},
                    {"role": "assistant", "content": _text(where, record, "completion")}]
    else:
        raise SolarError(f"unknown SFT record format {fmt!r}; use one of {', '.join(SFT_FORMATS)}")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in messages):
        raise SolarError(f"{where}: the conversation has no assistant turn to learn")
    for m in messages:
        if m["role"] == "assistant" and not m["content"].strip():
            raise SolarError(f"{where}: an assistant answer is empty")
    return messages


class ChatEncoder:
    """Token ids and per-token target flags for conversations, rendered by the one chat
    template definition (solar_jax.chat_template) that inference uses too."""

    def __init__(self, tokenizer, template: str = "solar", add_bos: bool = True):
        self.template_text = template_text(tokenizer, template)
        if tokenizer.eos_token_id is None:
            raise SolarError("the tokenizer has no EOS token; SFT needs one to end answers")
        self.tokenizer, self.template = tokenizer, template
        # SOLAR's template opens with BOS; `add_bos: false` drops it (a tokenizer template
        # decides for itself, as it does at inference).
        self.drop_bos = (not add_bos and template == "solar"
                         and tokenizer.bos_token_id is not None)

    def _ids(self, messages, add_generation_prompt):
        ids = render_ids(self.tokenizer, messages, self.template_text, add_generation_prompt)
        if self.drop_bos and ids[:1] == [self.tokenizer.bos_token_id]:
            ids = ids[1:]
        return ids

    def encode(self, where: str, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """(ids, is_target): the targets are each answer's tokens up to the end of that
        assistant turn (for SOLAR's template: the answer and its EOS)."""
        full = self._ids(messages, False)
        target = [False] * len(full)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            p = self._ids(messages[:i], True)
            upto = self._ids(messages[:i + 1], False)
            if full[:len(p)] != p or full[:len(upto)] != upto:
                raise SolarError(f"{where}: the prompt's tokens are not a prefix of the full "
                                 f"conversation's tokens (turn {i}); the answer boundary is "
                                 "ambiguous")
            for t in range(len(p), len(upto)):
                target[t] = True
        return full, target


def fit_length(where: str, ids: list[int], target: list[bool], max_len: int,
               policy: str) -> tuple[list[int], list[bool]] | None:
    """Apply the truncation policy: None means drop the record."""
    if len(ids) <= max_len:
        return ids, target
    first_target = target.index(True) if True in target else len(ids)
    if first_target >= max_len:
        raise SolarError(f"{where}: the prompt ({first_target} tokens) is longer than the "
                         f"maximum length {max_len}")
    if policy == "error":
        raise SolarError(f"{where}: {len(ids)} tokens exceed the maximum length {max_len}")
    if policy == "drop":
        return None
    return ids[:max_len], target[:max_len]
