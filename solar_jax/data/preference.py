"""Preference pairs for DPO: each record's prompt + chosen and prompt + rejected, tokenized
with the SFT chat template, one pair per row (padded, not packed: the two sides of a pair
are scored as whole sequences).

Records: `prompt`, `chosen`, `rejected` as strings, or TRL's conversational form (prompt a
list of messages, chosen/rejected lists holding the assistant turn).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grain
import numpy as np

from solar_jax.data.chat import ChatEncoder, check_messages, fit_length
from solar_jax.data.config import DataConfig
from solar_jax.data.sft import iter_records
from solar_jax.data.sources import expand_paths, subset_options, take_subset
from solar_jax.data.tokenize import corpus_fingerprint
from solar_jax.errors import SolarError

SIDES = ("chosen", "rejected")
STATE_VERSION = 1


def _messages(where: str, record: dict, system: str | None) -> tuple[list[dict], dict]:
    for key in ("prompt", *SIDES):
        if key not in record:
            raise SolarError(f"{where}: record has no field {key!r}")
    prompt = record["prompt"]
    prompt = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
              else check_messages(where, prompt))
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    answers = {}
    for side in SIDES:
        value = record[side]
        if isinstance(value, list):
            value = check_messages(where, value)
            if len(value) != 1 or value[0]["role"] != "assistant":
                raise SolarError(f"{where}: {side} must hold exactly one assistant message")
            value = value[0]["content"]
        if not isinstance(value, str) or not value.strip():
            raise SolarError(f"{where}: {side} is empty")
        answers[side] = value
    return prompt, answers


class PreferenceDataset:
    """Shuffled, per-process batches of pairs; `batch(step)` gives, for each side s,
    `s_input_ids`, `s_targets`, `s_loss_weights`, `s_segment_ids`, `s_positions` [B/P, S],
    and `index` (the pair ids, to look up precomputed reference log-probs)."""

    def __init__(self, arrays: dict[str, np.ndarray], *, seq_len: int, global_batch_size: int,
                 seed: int, shuffle: bool, process_index: int, process_count: int,
                 fingerprint: str):
        if global_batch_size % process_count:
            raise SolarError(f"global batch size {global_batch_size} is not divisible by the "
                             f"process count {process_count}")
        self.arrays, self.seq_len, self.seed = arrays, seq_len, seed
        self.global_batch_size, self.fingerprint = global_batch_size, fingerprint
        self.local_batch_size = global_batch_size // process_count
        self.num_rows = len(arrays["chosen_ids"])
        rows = grain.MapDataset.range(self.num_rows)
        if shuffle:
            rows = rows.shuffle(seed=seed)
        rows = rows.repeat()
        offset = process_index * self.local_batch_size
        self._rows = self.row_order = rows  # epoch after epoch; a mixture reads row_order
        self._offset = offset

    def rows(self, step: int) -> np.ndarray:
        start = step * self.global_batch_size + self._offset
        return np.array([self._rows[start + j] for j in range(self.local_batch_size)], np.int64)

    def gather(self, index: np.ndarray) -> dict[str, np.ndarray]:
        out = {"index": index.astype(np.int32)}
        for side in SIDES:
            ids, mask = self.arrays[f"{side}_ids"][index], self.arrays[f"{side}_mask"][index]
            lengths = self.arrays[f"{side}_len"][index]
            valid = np.arange(self.seq_len)[None, :] < lengths[:, None]
            out[f"{side}_input_ids"] = ids.astype(np.int32)
            out[f"{side}_targets"] = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], 1).astype(np.int32)
            out[f"{side}_loss_weights"] = np.concatenate(
                [mask[:, 1:], np.zeros_like(mask[:, :1])], 1).astype(np.float32)
            out[f"{side}_segment_ids"] = valid.astype(np.int32)
            out[f"{side}_positions"] = np.where(valid, np.arange(self.seq_len)[None, :], 0).astype(np.int32)
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self.gather(self.rows(step))

    def state(self, step: int) -> dict[str, Any]:
        return {"version": STATE_VERSION, "rows_consumed": int(step) * self.global_batch_size,
                "seed": self.seed, "seq_len": self.seq_len, "fingerprint": self.fingerprint}

    def restore(self, state: dict[str, Any], *, strict: bool = True) -> int:
        if state.get("version") != STATE_VERSION or "rows_consumed" not in state:
            raise SolarError(f"not a preference data state: {state!r:.200}")
        if strict and state.get("fingerprint") != self.fingerprint:
            raise SolarError("the preference data or its options changed since the checkpoint")
        rows = int(state["rows_consumed"])
        if rows % self.global_batch_size:
            raise SolarError(f"the checkpoint consumed {rows} rows, not a multiple of the global "
                             f"batch size {self.global_batch_size}")
        return rows // self.global_batch_size


def build_preference_dataset(cfg: DataConfig, tokenizer, *, seq_len: int,
                             global_batch_size: int, seed: int, process_index: int = 0,
                             process_count: int = 1) -> PreferenceDataset:
    if cfg.format != "preference":
        raise SolarError(f"objective dpo needs data.format: preference, got {cfg.format!r}")
    files = expand_paths(cfg.paths)
    encoder = ChatEncoder(tokenizer, cfg.chat_template, add_bos=cfg.add_bos)
    encoded: dict[str, list] = {f"{s}_{k}": [] for s in SIDES for k in ("ids", "mask")}
    for where, record in take_subset(lambda: iter_records(files), cfg.limit, cfg.fraction):
        prompt, answers = _messages(where, record, cfg.system_prompt)
        sides = {}
        for side in SIDES:
            messages = [*prompt, {"role": "assistant", "content": answers[side]}]
            sides[side] = fit_length(where, *encoder.encode(where, messages), seq_len,
                                     cfg.truncation)
        if any(v is None for v in sides.values()):
            continue  # dropped by the truncation policy
        for side, (ids, mask) in sides.items():
            encoded[f"{side}_ids"].append(ids)
            encoded[f"{side}_mask"].append(mask)
    if not encoded["chosen_ids"]:
        raise SolarError(f"no usable preference pairs in {', '.join(files)}")
    arrays = {}
    for side in SIDES:
        n = len(encoded[f"{side}_ids"])
        ids = np.zeros((n, seq_len), np.int32)
        mask = np.zeros((n, seq_len), bool)
        lengths = np.zeros(n, np.int64)
        for i, (x, m) in enumerate(zip(encoded[f"{side}_ids"], encoded[f"{side}_mask"])):
            ids[i, :len(x)], mask[i, :len(m)], lengths[i] = x, m, len(x)
        arrays.update({f"{side}_ids": ids, f"{side}_mask": mask, f"{side}_len": lengths})
    options = {"template": cfg.chat_template, "system": cfg.system_prompt,
               "truncation": cfg.truncation, "seq_len": seq_len, "bos": cfg.add_bos,
               **subset_options(cfg)}
    fingerprint = hashlib.sha256(json.dumps(
        [corpus_fingerprint(files, options, tokenizer), seed, cfg.shuffle]).encode()).hexdigest()[:24]
    return PreferenceDataset(arrays, seq_len=seq_len, global_batch_size=global_batch_size,
                             seed=seed, shuffle=cfg.shuffle, process_index=process_index,
                             process_count=process_count, fingerprint=fingerprint)
