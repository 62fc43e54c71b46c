"""Instruction records -> chat messages -> token ids with a loss mask on assistant tokens.

Record formats (`data.format`): alpaca (instruction, input, output), openorca
(system_prompt, question, response), gsm8k (question, answer), chat (messages of
role/content), prompt_completion (prompt, completion). Templates: SOLAR-Instruct's
(`data.chat_template: solar`, default) or the tokenizer's own (`tokenizer`).

Loss goes on every assistant turn's tokens and the EOS that ends it, nothing else. Each
turn's prompt is tokenized alone and must be a prefix of the tokens of prompt + answer;
otherwise the boundary would be ambiguous and the record is rejected by name.
"""

from __future__ import annotations

from typing import Any

from solar_jax.data.config import CHAT_TEMPLATES as TEMPLATES
from solar_jax.data.config import SFT_FORMATS
from solar_jax.errors import SolarError

ROLES = ("system", "user", "assistant")


def solar_prompt(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """SOLAR-Instruct's template text (no EOS: the encoder appends the EOS token id)."""
    out = []
    for m in messages:
        if m["role"] == "system":
            if m["content"]:
                out.append(f"### System:\n{m['content']}\n\n")
        elif m["role"] == "user":
            out.append(f"### User:\n{m['content']}\n\n")
        else:
            out.append(f"### Assistant:\n{m['content']}")
    if add_generation_prompt:
        out.append("### Assistant:\n")
    return "".join(out)


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
    """Token ids and per-token target flags for conversations."""

    def __init__(self, tokenizer, template: str = "solar", add_bos: bool = True):
        if template not in TEMPLATES:
            raise SolarError(f"unknown chat_template {template!r}; use one of {', '.join(TEMPLATES)}")
        if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
            raise SolarError("chat_template: tokenizer was asked, but the tokenizer has none")
        if tokenizer.eos_token_id is None:
            raise SolarError("the tokenizer has no EOS token; SFT needs one to end answers")
        self.tokenizer, self.template = tokenizer, template
        self.bos = [int(tokenizer.bos_token_id)] if add_bos and tokenizer.bos_token_id is not None \
            and template == "solar" else []
        self.eos = int(tokenizer.eos_token_id)

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _render(self, messages, add_generation_prompt):
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode(self, where: str, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """(ids, is_target): targets are assistant tokens and the EOS after each answer."""
        if self.template == "solar":
            return self._encode_solar(where, messages)
        return self._encode_with_tokenizer(where, messages)

    def _encode_solar(self, where, messages):
        ids, target = list(self.bos), [False] * len(self.bos)
        start = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = solar_prompt(messages[start:i], add_generation_prompt=True)
            p, full = self._enc(prompt), self._enc(prompt + m["content"])
            if full[:len(p)] != p:
                raise SolarError(f"{where}: the prompt's tokens are not a prefix of prompt + "
                                 f"answer (turn {i}); the answer boundary is ambiguous")
            ids += full + [self.eos]
            target += [False] * len(p) + [True] * (len(full) - len(p) + 1)
            start = i + 1
        return ids, target

    def _encode_with_tokenizer(self, where, messages):
        full = self._enc(self._render(messages, False))
        target = [False] * len(full)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            p = self._enc(self._render(messages[:i], True))
            upto = self._enc(self._render(messages[:i + 1], False))
            if full[:len(p)] != p or full[:len(upto)] != upto:
                raise SolarError(f"{where}: the prompt's tokens are not a prefix of the full "
                                 f"conversation's tokens (turn {i})")
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
