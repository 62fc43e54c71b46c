"""Multi-turn chat on top of `generate`: the conversation is re-encoded with the model's
chat template (solar_jax.chat_template) each turn (prefill is cheap next to decoding at chat lengths), and the
oldest turns are dropped when it would no longer fit the context."""

from __future__ import annotations

from typing import Callable

from solar_jax.chat_template import render_ids
from solar_jax.errors import SolarError
from solar_jax.generate import end_token_ids, generate


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation ready for the assistant's next answer, in the template
    the model records (the one it was trained with; SOLAR-Instruct's if it records none)."""
    return render_ids(tokenizer, messages)


class ChatSession:
    def __init__(self, model, tokenizer, *, system: str | None = None,
                 max_new_tokens: int = 512, **sampling):
        self.model, self.tokenizer = model, tokenizer
        self.system, self.max_new_tokens, self.sampling = system, max_new_tokens, sampling
        self.turns: list[dict] = []
        self.context = model.config.max_position_embeddings

    def reset(self) -> None:
        self.turns = []

    def _prompt(self, turns: list[dict]) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return conversation_ids(self.tokenizer, head + turns)

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to `text`, streamed to on_text; the turn is remembered."""
        turns = self.turns + [{"role": "user", "content": text}]
        ids = self._prompt(turns)
        # Leave room for an answer: drop the oldest user/assistant pairs until it fits.
        room = min(self.max_new_tokens, self.context // 4)
        while len(ids) + room > self.context and len(turns) > 1:
            turns = turns[2:]
            ids = self._prompt(turns)
        if len(ids) >= self.context:
            raise SolarError(f"the message is {len(ids)} tokens, longer than the model's "
                             f"context of {self.context}")
        stream = (lambda _row, delta: on_text(delta)) if on_text else None
        out = generate(self.model, [ids], self.max_new_tokens, tokenizer=self.tokenizer,
                       end_ids=end_token_ids(self.model, self.tokenizer), on_text=stream,
                       **self.sampling)[0]
        answer = out.text.strip()
        self.turns = turns + [{"role": "assistant", "content": answer}]
        return answer
