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


def _resolved(argv: list[str], tmp_path, config: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    settings.add_config_flag(p, "demo settings")
    settings.add_parts(p, [(Demo, None)])
    args = p.parse_args(argv + (["--config", str(tmp_path / "c.yaml")] if config is not None else []))
    if config is not None:
        (tmp_path / "c.yaml").write_text(config, encoding="utf-8")

    def error(message: str):
        raise SystemExit(f"error: {message}")

    settings.resolve(args, [(Demo, None)], "demo settings", error)
    return args


def test_resolve_reads_defaults_then_the_config_file_then_the_flags_given(tmp_path) -> None:
    args = _resolved(["--data", "x"], tmp_path)
    assert (args.data, args.steps, args.names, args.fast, args.limit, args.first) == ("x", 3, ["a"], False, None, "all")
    args = _resolved(["--steps", "7"], tmp_path, "data: y\nsteps: 5\nfast: true\nfirst: first\n")
    assert (args.data, args.steps, args.fast, args.first) == ("y", 7, True, "first")  # the flag given wins over the file
    with pytest.raises(ValueError, match=r"c.yaml: unknown demo settings: \['first_only'\]"):
        _resolved([], tmp_path, "data: y\nfirst_only: first\n")  # the file uses the settings' names
    with pytest.raises(SystemExit, match="required: --data"):  # neither the file nor a flag gives it
        _resolved([], tmp_path, "steps: 5\n")


def test_a_file_value_in_text_goes_through_the_flags_parser(tmp_path) -> None:
    from secondthoughts.cli import parse_args

    (tmp_path / "e.yaml").write_text("costs: 1,1,3\njson: true\n", encoding="utf-8")
    args = parse_args(["edits", "a b", "a c", "--config", str(tmp_path / "e.yaml")])
    assert args.costs == (1.0, 1.0, 3.0) and args.json is True
    args = parse_args(["edits", "a b", "a c", "--config", str(tmp_path / "e.yaml"), "--costs", "1,1,1"])
    assert args.costs == (1.0, 1.0, 1.0)
    (tmp_path / "e.yaml").write_text("costs: 1,x,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="e.yaml: costs: --costs must be three"):
        parse_args(["edits", "a b", "a c", "--config", str(tmp_path / "e.yaml")])


@dataclass
class Typed:
    rate: float = _f(0.1, "a rate")
    count: int = _f(2, "a count")
    mode: str = _f("a", "a mode", choices=("a", "b"))
    names: list = _f(["x"], "names")  # noqa: RUF009 (setting copies lists)
    out: str | None = _f(None, "where", type=str, required=True)
    other: str | None = _f(None, "another", type=str, required=True)


def _typed(tmp_path, config: str, argv: list[str] = ()) -> argparse.Namespace:
    p = argparse.ArgumentParser(exit_on_error=False)
    settings.add_config_flag(p, "typed settings")
    settings.add_parts(p, [(Typed, None)])
    (tmp_path / "t.yaml").write_text(config, encoding="utf-8")
    args = p.parse_args([*argv, "--config", str(tmp_path / "t.yaml")])

    def error(message: str):
        raise SystemExit(f"error: {message}")

    settings.resolve(args, [(Typed, None)], "typed settings", error)
    return args


def test_file_values_are_read_and_checked_as_the_flags_would_be(tmp_path) -> None:
    args = _typed(tmp_path, "rate: 5e-5\ncount: '4'\nnames: y\nout: o\nother: p\n")  # YAML reads 5e-5 as text
    assert (args.rate, args.count, args.names, args.out) == (5e-5, 4, ["y"], "o")
    for bad, message in (("count: 2.5", "count: expected a whole number"), ("mode: c", "mode: expected one of a, b"),
                         ("rate: fast", "rate: expected a number"), ("names: {a: 1}", "names: expected a list"),
                         ("other: 3", "other: expected text"), ("count: null", "count: expected a value")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _typed(tmp_path, f"out: o\nother: p\n{bad}\n")  # a repeated key: YAML keeps the last


def test_required_settings_are_all_named_and_a_flag_beats_a_null_in_the_file(tmp_path) -> None:
    with pytest.raises(SystemExit, match="required: --out, --other"):
        _typed(tmp_path, "count: 3\n")
    assert _typed(tmp_path, "out: null\nother: p\n", ["--out", "o"]).out == "o"
