"""Host-side text handling for generation: stop strings and incremental detokenization.

Tokens are decoded as a whole each time (BPE merges and byte-level pieces make per-token
decoding wrong at word and UTF-8 boundaries), and text is released to the terminal only
once it can no longer change: never a trailing partial UTF-8 character (decoded as U+FFFD),
and never a suffix that could still grow into a stop string, which must not be shown.
"""

from __future__ import annotations


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters to hold: a partial character, or a prefix of a stop."""
    hold = 0
    if text.endswith("\ufffd"):
        hold = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


class RowText:
    """Decoded text of one generated row, with stop-string truncation and streaming."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.text = ""
        self.shown = 0          # characters already released to the stream
        self.stopped = False    # a stop string was found (text is truncated before it)

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def add(self, tokens: list[int]) -> None:
        if self.stopped or not tokens:
            return
        self.tokens.extend(tokens)
        if self.tokenizer is None:
            return
        self.text = self._decode(self.tokens)
        cut = find_stop(self.text, self.stops)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            # Keep only the tokens needed to produce the stop string (the chunk may have
            # run past it): the shortest prefix whose text already contains it.
            keep = len(self.tokens)
            while keep > 1 and find_stop(self._decode(self.tokens[:keep - 1]), self.stops) >= 0:
                keep -= 1
            del self.tokens[keep:]

    def release(self, final: bool = False) -> str:
        """The text not yet shown that can no longer change (all of it when final)."""
        end = len(self.text)
        if not (final or self.stopped):
            end -= held_back(self.text, self.stops)
        delta = self.text[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return delta
