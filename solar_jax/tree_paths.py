"""Leaves of a nested-dict params tree addressed by their key path, ("layers", "attn",
"q_proj", "kernel"): how every checkpoint reader and writer, the loader and the train
state walk a params tree without flattening it."""

from __future__ import annotations

Path = tuple[str, ...]


def get_leaf(tree: dict, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def set_leaf(tree: dict, path: Path, value) -> None:
    """Sets the leaf at `path`, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def leaf_name(path: Path) -> str:
    """"layers/attn/q_proj/kernel": the path as error messages and file keys spell it."""
    return "/".join(path)
