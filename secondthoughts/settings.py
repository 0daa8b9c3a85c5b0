"""Settings dataclasses whose fields become command-line flags (``TrainConfig``, ``RefineConfig``,
``LearnConfig``, ``RewardConfig``, ``decoding.DecodeSettings``): the field helper, the flags made
from the fields, and the dict / YAML reader they share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, field, fields
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its flag help; list and dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def add_flags(
    p: argparse.ArgumentParser, cls: type, *, only: Collection[str] | None = None, given_only: bool = True,
    types: Mapping[str, Callable[[str], Any]] | None = None,
) -> None:
    """One flag per field of ``cls`` (``only``: these fields): ``--field-name``, or the metadata's
    ``flag``; its help, choices and metavar from the metadata, its default after the help. A bool is
    ``--x/--no-x``, or with a metadata ``flag`` (``--unconstrained``) that flag alone, which sets the
    opposite of the default; a metadata ``const`` makes a flag that sets that value, ``required``
    one that must be given. A list takes one or more values. The type is ``types[name]``, else
    the metadata's ``type`` (for fields whose default is None), else the default's. ``given_only``:
    flags not given stay out of the namespace, so that they do not override a ``--config`` file."""
    for f in fields(cls):  # type: ignore[arg-type]
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        quiet = default is None or default == [] or ("flag" in meta and (isinstance(default, bool) or "const" in meta))  # the help says it
        shown = "" if quiet else f" (default: {json.dumps(default)})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS if given_only else default, "help": meta.get("help", "") + shown}
        if meta.get("required"):  # a setting every use must give (an input file): flag, or --config (resolve checks)
            kw["required"], kw["help"] = not given_only, meta.get("help", "") + (" (required)" if given_only else "")
        if isinstance(default, bool):
            action = ("store_false" if default else "store_true") if "flag" in meta else argparse.BooleanOptionalAction
            p.add_argument(flag, action=action, **kw)
            continue
        if "const" in meta:  # a flag that sets one value (--first-rewrite: "first")
            p.add_argument(flag, action="store_const", const=meta["const"], **kw)
            continue
        kind = (types or {}).get(f.name) or meta.get("type") or (str if isinstance(default, list) else type(default))
        if isinstance(default, list) and f.name not in (types or {}):
            kw["nargs"] = "+"
        p.add_argument(flag, type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"), **kw)


def flags_given(cls: type, args: Any) -> dict[str, Any]:
    """The values of ``cls``'s fields that the namespace ``args`` holds (a flag left out of it, as
    ``add_flags(given_only=True)`` leaves those not given, is left out here too)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]


def from_dict(cls: type[T], d: dict[str, Any], what: str) -> T:
    """``cls(**d)`` with flag spellings (``max-length``) accepted; unknown keys are an error
    that names them (``what``: e.g. "training settings")."""
    d = {k.replace("-", "_"): v for k, v in d.items()}
    unknown = sorted(set(d) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown {what}: {unknown}")
    return cls(**d)


def read_yaml(path: str | Any, what: str) -> dict[str, Any]:
    """A YAML file of settings as a dict (an empty file is no settings)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of {what}")
    return d


def saved_section(out: str | Any, section: str, file: str = "config.json") -> dict[str, Any]:
    """The settings a run folder recorded (``file``'s ``section``), or {} where none."""
    from pathlib import Path

    saved = Path(out) / file
    return dict(json.loads(saved.read_text(encoding="utf-8")).get(section) or {}) if saved.is_file() else {}


def merged(cls: type[T], what: str, *layers: dict[str, Any]) -> T:
    """The one rule every command follows: a resumed run's saved settings, then a ``--config``
    YAML file, then the flags given, later layers winning. Values of the wrong kind: ValueError."""
    d: dict[str, Any] = {}
    for layer in layers:
        d.update({k.replace("-", "_"): v for k, v in layer.items()})
    try:
        return from_dict(cls, d, what)
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad {what}: {e}") from e


def from_args(cls: type[T], args: Any, what: str, section: str, *, file: str = "config.json",
              defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> T:
    """A command's settings by :func:`merged`'s rule: with ``--resume`` the run's saved
    ``section`` of ``file`` (in ``--out``), else ``defaults(chosen)`` (e.g. what ``--init-from``
    carries over); then ``--config``; then the flags given."""
    given = flags_given(cls, args)
    from_file = read_yaml(args.config_file, what) if args.config_file else {}
    chosen = {**from_file, **given}
    if args.resume:
        base = saved_section(chosen.get("out", cls.out), section, file)  # type: ignore[attr-defined]
    else:
        base = defaults(chosen) if defaults else {}
    return merged(cls, what, base, from_file, given)


# A command's settings: a dataclass and the fields it takes of it (None: all).
Part = tuple[type, Collection[str] | None]


def add_config_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE``: a YAML file of the command's settings (its flags' names), under the flags."""
    p.add_argument("--config", dest="config_file", default=None, metavar="FILE", help=f"YAML file of {what} (flags given override it)")


def add_parts(p: argparse.ArgumentParser, parts: Sequence[Part], types: Mapping[str, Callable[[str], Any]] | None = None) -> None:
    """The flags of a command's settings (``add_flags`` with ``given_only``: what is not given
    is filled in by :func:`resolve`)."""
    for cls, only in parts:
        add_flags(p, cls, only=only, types=types)


def resolve(args: Any, parts: Sequence[Part], what: str, error: Callable[[str], NoReturn]) -> None:
    """Set every setting of ``parts`` on ``args`` by :func:`merged`'s rule, as ``train`` and
    ``refine`` read theirs: the defaults, then ``--config`` (``args.config_file``), then the flags
    given. A key of the file that is no setting of the command, or a value of the wrong kind:
    ValueError; a required setting given by neither: ``error`` (argparse's, exit status 2)."""
    config = getattr(args, "config_file", None)
    from_file = {k.replace("-", "_"): v for k, v in (read_yaml(config, what) if config else {}).items()}
    names = {cls: [f.name for f in fields(cls) if only is None or f.name in only] for cls, only in parts}  # type: ignore[arg-type]
    unknown = sorted(set(from_file) - {n for ns in names.values() for n in ns})
    if unknown:
        raise ValueError(f"{config}: unknown {what}: {unknown}")
    for cls, _ in parts:
        layer = {f.name: _from_text(f, from_file[f.name], config) for f in fields(cls) if f.name in names[cls] and f.name in from_file}  # type: ignore[arg-type]
        given = {n: getattr(args, n) for n in names[cls] if hasattr(args, n)}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.metadata.get("required") and f.name in names[cls] and layer.get(f.name, given.get(f.name)) is None:
                error(f"the following arguments are required: {f.metadata.get('flag') or '--' + f.name.replace('_', '-')}")
        chosen = merged(cls, what, layer, given)
        for n in names[cls]:
            setattr(args, n, getattr(chosen, n))


def _from_text(f: Any, value: Any, config: str) -> Any:
    """A file's value as its flag would read it, where the flag has a parser of its own and the
    file holds text (``costs: 1,1,3``); YAML's numbers, lists and booleans are taken as they are."""
    parse = f.metadata.get("type")
    if not isinstance(value, str) or parse in (None, str):
        return value
    try:
        return parse(value)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"{config}: {f.name}: {e}") from None
