"""`solar-jax merge` flags generated from the merge-method registry: one flag per parameter
name that some method exposes (--weights, --t, --density, --lambda, ...), its help saying
which methods read it and their defaults, and an epilog describing every method. Whether a
flag suits the chosen method is the API's check (a one-line error), not argparse's."""

from __future__ import annotations

import argparse
import textwrap

from solar_jax import merge_methods
from solar_jax.merge_methods import REQUIRED


def _merging():
    return [m for m in merge_methods.methods() if not m.stacks_layers]


def _flag_params():
    """flag -> [(method, param)] in registry order."""
    out: dict[str, list] = {}
    for m in _merging():
        for p in m.params:
            if p.flag:
                out.setdefault(p.flag, []).append((m, p))
    return out


def _default(p) -> str | None:
    if p.default_text:
        return p.default_text
    if p.default is REQUIRED or p.default is None or callable(p.default):
        return None
    if p.kind is bool:
        return "on" if p.default else "off"
    return f"{p.default:g}"


def _dest(flag: str) -> str:
    return "param_" + flag.lstrip("-").replace("-", "_")


def add_method_flags(p: argparse.ArgumentParser) -> None:
    names = ", ".join(m.name for m in _merging())
    # Checked by the API rather than argparse `choices`, so a typo is a one-line error.
    p.add_argument("--method", default=None, help=f"one of: {names} (see below)")
    p.add_argument("--base", default=None, help="the base model: " + "; ".join(
        f"{m.name}: {m.base_help}" for m in _merging() if m.uses_base))
    for flag, users in _flag_params().items():
        first = users[0][1]
        used = ", ".join(m.name + (f" (default {_default(q)})" if _default(q) else "")
                         for m, q in users)
        kwargs = dict(dest=_dest(flag), default=None, help=f"{first.help}; {used}")
        if first.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif first.per_model:
            kwargs.update(type=float, nargs="+", metavar=first.name[0].upper())
        else:
            kwargs.update(type=float, metavar=first.name[0].upper())
        p.add_argument(flag, **kwargs)


def method_parameters(args) -> dict:
    """The flags given, keyed by mergekit's parameter names (one value: for every model)."""
    out = {}
    for flag, users in _flag_params().items():
        value = getattr(args, _dest(flag))
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is not None:
            out[users[0][1].name] = value
    return out


def methods_epilog() -> str:
    lines = ["merge methods (parameters use mergekit's names, in recipes too):"]
    for m in _merging():
        base = {"none": "no base", "required": "--base required",
                "first": "--base optional (default: the first MODEL)"}[m.base]
        lines.append(f"  {m.name:<16} {m.summary}")
        lines += textwrap.wrap(f"{m.arity()}; {base}; parameters: {m.param_names()}", 88,
                               initial_indent=" " * 19, subsequent_indent=" " * 19)
    return "\n".join(lines)
