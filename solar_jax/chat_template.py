"""The chat format, defined once: SFT and DPO data, `chat_prompt`, `generate --chat`, `chat`
and the demo all render conversations through `render_ids` below.

SOLAR_TEMPLATE is SOLAR-10.7B-Instruct's published format (`### System:`, `### User:`,
`### Assistant:` markers; a system turn only when it has content) written as a Jinja chat
template, with two things the published template leaves to the tokenizer made explicit so
that a tokenized rendering is exactly the ids a model trains on: BOS at the start (HF's
apply_chat_template tokenizes without special tokens) and EOS after every answer (the model
learns to stop; a multi-turn prompt then shows it where a turn ended).

A trained model records the template it was trained with as its tokenizer's `chat_template`
(`record_template`), so transformers, llama.cpp (via the GGUF's tokenizer.chat_template)
and our own inference all chat with it in that format; inference uses the template a model
records (`model_template`), and SOLAR_TEMPLATE where a tokenizer records none.
"""

from __future__ import annotations

from solar_jax.errors import SolarError

SOLAR_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] %}{{ '### System:\\n' + message['content'] + '\\n\\n' }}{% endif %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

# `data.chat_template` values: SOLAR-Instruct's format, or the one the tokenizer carries.
TEMPLATE_NAMES = ("solar", "tokenizer")


def template_text(tokenizer, name: str) -> str:
    """The Jinja text a `chat_template` name stands for with this tokenizer."""
    if name == "solar":
        return SOLAR_TEMPLATE
    if name == "tokenizer":
        text = getattr(tokenizer, "chat_template", None)
        if not text:
            raise SolarError("chat_template: tokenizer was asked, but the tokenizer has none")
        if not isinstance(text, str):
            raise SolarError("chat_template: tokenizer has several named templates; "
                             "solar-jax needs one")
        return text
    raise SolarError(f"unknown chat_template {name!r}; use one of {', '.join(TEMPLATE_NAMES)}")


def model_template(tokenizer) -> str:
    """The template a model records (its tokenizer's), else SOLAR-Instruct's."""
    text = getattr(tokenizer, "chat_template", None)
    return text if isinstance(text, str) and text else SOLAR_TEMPLATE


def render_text(tokenizer, messages: list[dict], template: str,
                add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def text_ids(tokenizer, text: str) -> list[int]:
    """Ids of rendered text: special tokens in it (BOS, EOS) are matched, none are added."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def render_ids(tokenizer, messages: list[dict], template: str | None = None,
               add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation (by default ready for the assistant's next answer) in
    `template` (Jinja text), else the template the model records."""
    text = render_text(tokenizer, messages, template or model_template(tokenizer),
                       add_generation_prompt)
    return text_ids(tokenizer, text)


def record_template(tokenizer, name: str) -> None:
    """Make `tokenizer` carry the template a run trains with, so that saving it (the run
    directory, and every checkpoint exported from it) records the format the model knows."""
    tokenizer.chat_template = template_text(tokenizer, name)
