"""What the hostile-CLI tests (issue 18) share: digests of a tree's bytes, staging names
left behind, the one-error-line check, and a tiny HF model to attack.

The fixtures are imported by the test modules that use them (pytest finds them there)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import make_hf_model, write_byte_tokenizer


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or the file itself) -> sha256 of its bytes."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path) if p != path else p.name):
            hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path) -> list[str]:
    """Staging or backup names a writer left behind."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if ".partial-" in p.name or ".old-" in p.name)


def one_line(err: str, start: str = "error:") -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), err
    return lines[0]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny HF model (byte tokenizer, so generate/chat/eval run) in ckpt/smol."""
    root = tmp_path_factory.mktemp("hostile")
    path = root / "ckpt" / "smol"
    make_hf_model(path, vocab_size=258, max_position_embeddings=64, bos_token_id=256,
                  eos_token_id=257)
    write_byte_tokenizer(path)
    return path


@pytest.fixture
def ckpt(hf, tmp_path):
    """A fresh copy of ckpt/ (so a bad guard would destroy a copy, not the fixture)."""
    import shutil
    shutil.copytree(hf.parent, tmp_path / "ckpt")
    return tmp_path / "ckpt" / "smol"
