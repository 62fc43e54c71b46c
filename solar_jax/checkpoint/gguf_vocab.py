"""The tokenizer half of a GGUF export: `tokenizer.*` metadata that llama.cpp reads.

Two origins, mirroring the import side (gguf_source.py):

* a source that came from a GGUF file: its own `tokenizer.*` keys are copied through
  unchanged (same values, same GGUF value types);
* anything else: the Hugging Face tokenizer files the source carries (copy_extras), read
  the way llama.cpp's convert_hf_to_gguf.py reads them, without transformers or torch:
  - byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2 style) -> tokenizer.ggml.model "gpt2"
    with tokens, token types, merges and the name of llama.cpp's matching pre-tokenizer;
  - SentencePiece-style BPE with byte fallback (Llama 2, Mistral, SOLAR) -> "llama" with
    tokens, scores and token types (scores rank tokens in the order their merges apply).
  Special token ids, add_bos/add_eos and the chat template come through gguf-py's own
  SpecialVocab, as in llama.cpp's converter.

Everything is collected into a dict of GGUFValues before the output file is opened, so a
tokenizer that cannot be exported fails the conversion before anything is written.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError

# llama.cpp's token types (gguf.TokenType), spelled out so the mapping reads plainly.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.json pre-tokenizer regexes whose llama.cpp counterpart (tokenizer.ggml.pre) is known.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPIECE_UNDERLINE = "\u2581"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def tokenizer_metadata(source, config: ModelConfig) -> dict:
    """`tokenizer.*` key -> gguf.GGUFValue for `source`; SolarError when it has none we can use."""
    origin = gguf_origin(source)
    if origin is not None:
        return _from_gguf(origin, config)
    with tempfile.TemporaryDirectory(prefix="solar-jax-tok-") as tmp:
        source.copy_extras(Path(tmp))
        return from_hf_dir(Path(tmp), config, where=source.location)


def gguf_origin(source):
    """The GGUFSource whose tokenizer `source` carries, if it came from a GGUF file."""
    if isinstance(source, GGUFSource):
        return source
    inner = getattr(source, "extras_source", None)  # a merge or up-scale carries its base's
    if inner is not None:
        return gguf_origin(inner)
    owner = getattr(getattr(source, "copy_extras", None), "__self__", None)
    if isinstance(owner, GGUFSource):  # api.save_model of a model loaded from a GGUF
        return owner
    extras = getattr(source, "_extras_dir", None)  # a checkpoint/run that started from a GGUF
    if extras is not None and Path(extras).is_file() and Path(extras).suffix == ".gguf":
        return GGUFSource(Path(extras))
    return None


# ---- from a GGUF file: copy through -------------------------------------------------------


def _from_gguf(origin, config: ModelConfig) -> dict:
    import gguf

    fields = origin._reader.fields
    if "tokenizer.ggml.model" not in fields:
        raise SolarError(f"GGUF file {origin.location} has no tokenizer to export; "
                         f"pass --no-tokenizer to write the weights only")
    out = {}
    for key, field in fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            out[key] = gguf.GGUFValue(value=raw_field_value(field), type=field.types[0],
                                      sub_type=sub)
    tokens = out.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.value) != config.vocab_size:
        raise SolarError(f"GGUF file {origin.location} lists {len(tokens.value)} tokens but the "
                         f"model has {config.vocab_size} embedding rows")
    return out


def raw_field_value(field):
    """A GGUFReader field's value; strings stay bytes, so nothing is re-encoded on the way."""
    import gguf

    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    if kind == gguf.GGUFValueType.ARRAY and field.types[-1] == gguf.GGUFValueType.STRING:
        return [bytes(field.parts[i]) for i in field.data]
    return field.contents()


# ---- from Hugging Face tokenizer files ----------------------------------------------------


def from_hf_dir(folder: Path, config: ModelConfig, where=None) -> dict:
    """tokenizer.* metadata from tokenizer.json (+ tokenizer_config.json, chat template)."""
    import gguf

    where = where or folder
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise SolarError(f"{where} has no tokenizer (tokenizer.json), which llama.cpp needs; "
                         f"pass --no-tokenizer to write the weights only")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SolarError(f"tokenizer.json of {where} is not valid JSON: {e}") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise SolarError(f"tokenizer.json of {where} is a {model.get('type')!r} tokenizer; only "
                         f"BPE tokenizers (byte-level or SentencePiece-style) can be exported")
    kind = _bpe_kind(data)
    if kind is None:
        raise SolarError(f"tokenizer.json of {where} is neither byte-level BPE nor "
                         f"SentencePiece-style BPE with byte fallback; cannot export it to llama.cpp")
    vocab_size = config.vocab_size
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}
    by_id: dict[int, str] = {int(i): tok for tok, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    top = max(by_id)
    if top >= vocab_size:
        raise SolarError(f"tokenizer of {where} has token id {top} but the model has only "
                         f"{vocab_size} embedding rows")

    rec = gguf.GGUFWriter(None, "llama")  # records key/values; never opens a file
    tokens, types = [], []
    unk = model.get("unk_token")
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(text)
            if kind == "llama" and text == unk:
                types.append(UNKNOWN)
            elif added[i].get("special") or _looks_special(text):
                types.append(CONTROL)
            else:
                types.append(USER_DEFINED)
        else:
            tokens.append(text)
            if kind == "llama" and text == unk:
                types.append(UNKNOWN)
            elif kind == "llama" and BYTE_TOKEN.fullmatch(text):
                types.append(BYTE)
            else:
                types.append(NORMAL)

    rec.add_tokenizer_model(kind)
    if kind == "gpt2":
        rec.add_add_space_prefix(False)
        rec.add_tokenizer_pre(_pre_tokenizer_name(data, where))
    else:
        rec.add_add_space_prefix(_spm_adds_space_prefix(data))
    rec.add_token_list(tokens)
    if kind == "llama":
        rec.add_token_scores(_spm_scores(model, tokens, types))
    rec.add_token_types(types)

    special = gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
    if kind == "gpt2" and not special.merges:
        raise SolarError(f"tokenizer.json of {where} has no merges, which llama.cpp requires "
                         f"of a byte-level BPE tokenizer")
    if special.chat_template is None and (folder / "chat_template.jinja").is_file():
        special.chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    for role, value in (("bos", config.bos_token_id), ("eos", config.eos_token_id),
                        ("pad", config.pad_token_id)):
        if isinstance(value, list):
            value = value[0] if value else None
        if role not in special.special_token_ids and isinstance(value, int) and 0 <= value < vocab_size:
            special.special_token_ids[role] = value
    if "bos" not in special.add_special_token:
        special.add_special_token["bos"] = _post_processor_adds_bos(data)
    special.add_to_gguf(rec, quiet=True)
    return {k: v for k, v in rec.kv_data[0].items() if k.startswith("tokenizer.")}


def _flatten(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [c for child in component.get(key, []) for c in _flatten(child, key)]
    return [component]


def _bpe_kind(data: dict) -> str | None:
    pre = _flatten(data.get("pre_tokenizer"), "pretokenizers")
    norm = _flatten(data.get("normalizer"), "normalizers")
    if any(p.get("type") == "ByteLevel" for p in pre):
        return "gpt2"
    spm_pre = any(p.get("type") == "Metaspace" for p in pre)
    spm_norm = any(n.get("type") in ("Prepend", "Replace") and
                   SPIECE_UNDERLINE in json.dumps(n, ensure_ascii=False) for n in norm)
    if data["model"].get("byte_fallback") and (spm_pre or spm_norm):
        return "llama"
    return None


def _regex(p: dict) -> str | None:
    pattern = p.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def _pre_tokenizer_name(data: dict, where) -> str:
    """llama.cpp's name for the byte-level pre-tokenizer in tokenizer.json.

    convert_hf_to_gguf.py recognises pre-tokenizers by hashing the ids of a test string; we
    match the pre-tokenizer's definition instead, for the families that Llama-architecture
    models use, and refuse the rest (a wrong name would tokenize differently, silently).
    """
    norm = _flatten(data.get("normalizer"), "normalizers")
    pre = _flatten(data.get("pre_tokenizer"), "pretokenizers")
    types = [p.get("type") for p in pre]
    last = pre[-1] if pre else {}
    byte_level = (last.get("type") == "ByteLevel" and not last.get("add_prefix_space", False))
    if byte_level and not norm:
        if types == ["ByteLevel"] and last.get("use_regex", True):
            return "gpt-2"
        if (types == ["Digits", "ByteLevel"] and pre[0].get("individual_digits")
                and last.get("use_regex", True)):
            return "smollm"
        if (types == ["Split", "ByteLevel"] and not last.get("use_regex", True)
                and pre[0].get("behavior") == "Isolated" and not pre[0].get("invert")
                and _regex(pre[0]) == LLAMA3_SPLIT):
            return "llama-bpe"
    if (byte_level and all(n.get("type") == "NFC" for n in norm) and types == ["Split", "ByteLevel"]
            and not last.get("use_regex", True) and _regex(pre[0]) == QWEN2_SPLIT):
        return "qwen2"
    described = " + ".join(t or "?" for t in types) or "none"
    raise SolarError(f"tokenizer.json of {where} uses a byte-level pre-tokenizer ({described}) "
                     f"that solar-jax cannot match to a llama.cpp one (known: gpt-2, smollm, "
                     f"llama-bpe, qwen2); convert with llama.cpp's convert_hf_to_gguf.py or pass "
                     f"--no-tokenizer")


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens that act as control."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _post_processor_adds_bos(data: dict) -> bool:
    for proc in _flatten(data.get("post_processor"), "processors"):
        if proc.get("type") in ("BertProcessing", "RobertaProcessing"):
            return True
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            if single and "SpecialToken" in single[0]:
                return True
    return False


def _spm_adds_space_prefix(data: dict) -> bool:
    for n in _flatten(data.get("normalizer"), "normalizers"):
        if n.get("type") == "Prepend" and n.get("prepend") == SPIECE_UNDERLINE:
            return True
    for p in _flatten(data.get("pre_tokenizer"), "pretokenizers"):
        if p.get("type") == "Metaspace":
            scheme = p.get("prepend_scheme")
            return scheme in ("first", "always") if scheme else bool(p.get("add_prefix_space", True))
    return False


def _spm_scores(model: dict, tokens: list[str], types: list[int]) -> list[float]:
    """SentencePiece scores for a tokenizer.json that only keeps the merges.

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text is the
    vocabulary entry with the highest score. HF's converter wrote the merges in exactly
    that order (by the score of the merged piece), so a merged piece scores -(rank of its
    first merge); pieces no merge produces (characters, bytes, control tokens) score 0, as
    in Llama's tokenizer.model, and added user-defined tokens -1000, as llama.cpp writes.
    """
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    n = len(rank)
    scores = []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind == USER_DEFINED:
            scores.append(-1000.0)
        elif kind != NORMAL or len(text) <= 1:
            scores.append(0.0)
        else:  # unreachable multi-character pieces go after every merge, in id order
            scores.append(-float(rank.get(text, n + i)))
    return scores
