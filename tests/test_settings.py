"""Flags made from a settings dataclass (``settings.add_flags``) and read back (``flags_given``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from secondthoughts import settings

_f = settings.setting


@dataclass
class Demo:
    data: str = _f("", "input file", required=True)
    steps: int = _f(3, "how many")
    names: list = _f(["a"], "some names")  # noqa: RUF009 (setting copies lists)
    fast: bool = _f(False, "go fast")
    limit: int | None = _f(None, "at most N", type=int, metavar="N")
    first: str = _f("all", "take the first only", flag="--first-only", const="first")


def _parser(given_only: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    settings.add_flags(p, Demo, given_only=given_only)
    return p


def test_flags_types_defaults_and_required() -> None:
    args = _parser(False).parse_args(["--data", "x.jsonl", "--steps", "5", "--names", "b", "c", "--fast", "--limit", "2", "--first-only"])
    assert Demo(**settings.flags_given(Demo, args)) == Demo("x.jsonl", 5, ["b", "c"], True, 2, "first")
    defaults = _parser(False).parse_args(["--data", "y"])
    assert Demo(**settings.flags_given(Demo, defaults)) == Demo("y")
    with pytest.raises(SystemExit):  # argparse's own message names the missing flag
        _parser(False).parse_args(["--steps", "5"])
    with pytest.raises(argparse.ArgumentError):
        _parser(False).parse_args(["--data", "x", "--steps", "many"])


def test_given_only_leaves_flags_not_given_out() -> None:
    args = _parser(True).parse_args(["--data", "x", "--no-fast"])
    assert settings.flags_given(Demo, args) == {"data": "x", "fast": False}  # a --config file keeps the rest
    help_text = _parser(True).format_help()
    assert "(default: 3)" in help_text and "input file" in help_text and "--first-only" in help_text
