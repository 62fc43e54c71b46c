"""README's command synopsis cannot drift from the CLI: for every registered subcommand
(whatever solar_jax.cli registers, so a new command fails here until README lists it),
the synopsis entry must name every flag and positional of its parser, bracket exactly
the optional flags, and spell out argparse `choices` as `a|b|c`; and it must list no flag
or command the parser lacks. The parser's actions are read programmatically, not its
--help text."""

from __future__ import annotations

import argparse
import re

import pytest

from conftest import ROOT
from solar_jax.cli import build_parser, subcommands

FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def synopsis() -> dict[str, str]:
    """README's `## Command line` block: command name -> its entry (continuation lines
    joined, `# comments` dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Command line\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        if not line.strip():
            if entries:
                break
            continue
        if not line.startswith("    "):
            break
        body = line.split("  #", 1)[0].strip()
        if body.startswith("solar-jax "):
            current = body.split()[1]
            assert current not in entries, f"README lists {current} twice"
            entries[current] = body
        elif current is not None:
            entries[current] += " " + body
    return entries


def bracket_depths(entry: str) -> dict[str, tuple[int, int]]:
    """flag -> (depth inside [ ], depth inside ( )) where it appears."""
    out, square, round_ = {}, 0, 0
    for i, ch in enumerate(entry):
        if ch == "[":
            square += 1
        elif ch == "]":
            square -= 1
        elif ch == "(":
            round_ += 1
        elif ch == ")":
            round_ -= 1
        elif ch == "-" and entry.startswith("--", i) and (i == 0 or entry[i - 1] != "-"):
            match = FLAG.match(entry, i)
            if match:
                out.setdefault(match.group(), (square, round_))
    return out


def in_required_group(parser: argparse.ArgumentParser, action) -> bool:
    return any(action in g._group_actions and g.required
               for g in parser._mutually_exclusive_groups)


COMMANDS = subcommands(build_parser())


def test_readme_lists_every_command_and_no_other():
    assert sorted(synopsis()) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_synopsis_matches_the_parser(name):
    parser, entry = COMMANDS[name], synopsis().get(name, "")
    assert entry, f"README's synopsis has no line for `solar-jax {name}`"
    depths = bracket_depths(entry)
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # a positional
            token = action.metavar or action.dest.upper()
            assert token in entry, f"{name}: README does not show the positional {token}"
            continue
        for flag in (s for s in action.option_strings if s.startswith("--")):
            flags.add(flag)
            assert flag in depths, f"{name}: README's synopsis lacks {flag}"
            square, round_ = depths[flag]
            if action.required:
                assert square == 0, f"{name}: {flag} is required; README brackets it"
            elif in_required_group(parser, action):
                assert round_ > 0, f"{name}: {flag} is one of a required (a | b) group"
            else:
                assert square > 0, f"{name}: {flag} is optional; README must bracket it"
            if action.choices:
                spelled = "|".join(map(str, action.choices))
                assert f"{flag} {spelled}" in entry, f"{name}: README should say {flag} {spelled}"
    extra = set(depths) - flags
    assert not extra, f"{name}: README lists flags the command does not have: {sorted(extra)}"
