"""Settings dataclasses whose fields become command-line flags (every command's: ``TrainConfig``,
``RefineConfig``, ``decoding.DecodeSettings``, ``commands.realign.RealignOptions``, ...): the field
helper, the flags made from the fields, the dict / YAML reader, and the one rule by which a
command's settings are read (:func:`resolve`, :func:`from_args`: defaults, then ``--config``, then
the flags given)."""

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
    one that must be given (with ``given_only``: by a flag or the file, checked by :func:`resolve`).
    A list takes one or more values (metadata ``nargs``: exactly that many flag values, a file's list
    checked by the command; ``whole``: one value its parser reads as the whole list, ``--cost-sets
    1,1,2;1,1,3``). The type is ``types[name]``, else
    the metadata's ``type`` (for fields whose default is None), else the default's. ``given_only``:
    flags not given stay out of the namespace, so that they do not override a ``--config`` file."""
    for f in fields(cls):  # type: ignore[arg-type]
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        default = field_default(f)
        quiet = default is None or default == [] or ("flag" in meta and (isinstance(default, bool) or "const" in meta))  # the help says it
        shown = "" if quiet else f" (default: {meta.get('shown') or json.dumps(default)})"
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
        kind = flag_parser(f, types)
        if isinstance(default, list) and f.name not in (types or {}) and not meta.get("whole"):
            kw["nargs"] = meta.get("nargs", "+")  # metadata nargs: a fixed count (--heads-add A C)
        p.add_argument(flag, type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"), **kw)


def field_default(f: Any) -> Any:
    """A dataclass field's default (a fresh one where the field has a factory)."""
    return f.default if f.default is not MISSING else f.default_factory()


def flag_parser(f: Any, types: Mapping[str, Callable[[str], Any]] | None = None) -> Callable[[str], Any]:
    """What reads a field's flag value (and a ``--config`` file's text for it): ``types[name]``,
    else the metadata's ``type``, else the default's type (``str`` for a list's items)."""
    default = field_default(f)
    return (types or {}).get(f.name) or f.metadata.get("type") or (str if isinstance(default, list) else type(default))


def parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as a flag type whose ValueError message argparse shows as it is."""

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    read.__name__ = parse.__name__
    return read


def positive(kind: type[int] | type[float], least: float = 1) -> Callable[[str], float]:
    """A flag type: a finite number of ``kind``, at least ``least`` (0 < x for floats)."""
    import math

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < least or (kind is float and value <= 0):
            raise argparse.ArgumentTypeError(f"expected a number >= {least:g}, got {text!r}" if kind is int else f"expected seconds > 0, got {text!r}")
        return value

    return parse


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
    carries over); then ``--config`` (read and checked by :func:`file_settings`); then the flags given."""
    given = flags_given(cls, args)
    from_file = file_settings(fields(cls), args.config_file, what) if args.config_file else {}  # type: ignore[arg-type]
    chosen = {**from_file, **given}
    if args.resume:
        base = saved_section(chosen.get("out", cls.out), section, file)  # type: ignore[attr-defined]
    else:
        base = defaults(chosen) if defaults else {}
    return merged(cls, what, base, from_file, given)


def file_settings(known_fields: Sequence[Any], config: str, what: str) -> dict[str, Any]:
    """A ``--config`` file's settings, each value read and checked as its flag reads its own
    (:func:`from_file`); a key that is none of ``known_fields``: ValueError naming the file."""
    raw = {k.replace("-", "_"): v for k, v in read_yaml(config, what).items()}
    known = {f.name: f for f in known_fields}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{config}: unknown {what}: {unknown}")
    return {name: from_file(known[name], v, config) for name, v in raw.items()}


# A command's settings: a dataclass and the fields it takes of it (None: all).
Part = tuple[type, Collection[str] | None]


def add_config_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE``: a YAML file of the command's settings by their field names
    (``batch_size: 4``, ``learn: false``), under the flags given."""
    p.add_argument("--config", dest="config_file", default=None, metavar="FILE", help=f"YAML file of {what} (flags given override it)")


def add_parts(p: argparse.ArgumentParser, parts: Sequence[Part]) -> None:
    """The flags of a command's settings (``add_flags`` with ``given_only``: what is not given
    is filled in by :func:`resolve`; a flag's own parser is its field's metadata ``type``)."""
    for cls, only in parts:
        add_flags(p, cls, only=only)


def resolve(args: Any, parts: Sequence[Part], what: str, error: Callable[[str], NoReturn]) -> None:
    """Set every setting of ``parts`` on ``args`` by :func:`merged`'s rule, as ``train`` and
    ``refine`` read theirs: the defaults, then ``--config`` (``args.config_file``), then the flags
    given. The file's values are read as the flags read theirs (:func:`from_file`); a key that is
    no setting of the command, or a value its flag would refuse: ValueError. Required settings
    that neither gives: ``error`` (argparse's, exit status 2), all of them named."""
    config = getattr(args, "config_file", None)
    taken = {cls: [f for f in fields(cls) if only is None or f.name in only] for cls, only in parts}  # type: ignore[arg-type]
    in_file = file_settings([f for fs in taken.values() for f in fs], config, what) if config else {}
    missing = []
    for cls, mine in taken.items():
        layer = {f.name: in_file[f.name] for f in mine if f.name in in_file}
        chosen = merged(cls, what, layer, {f.name: getattr(args, f.name) for f in mine if hasattr(args, f.name)})
        for f in mine:
            setattr(args, f.name, getattr(chosen, f.name))
            if f.metadata.get("required") and getattr(chosen, f.name) in (None, "", []):
                missing.append(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
    if missing:
        error(f"the following arguments are required: {', '.join(missing)}")


def from_file(f: Any, value: Any, config: str) -> Any:
    """A ``--config`` file's value for field ``f``, read and checked as its flag would be: numbers
    as numbers (``5e-5`` too), text through the flag's own parser (``costs: 1,1,3``; a YAML list or
    mapping is written out for it first: ``costs: [1, 1, 3]``), one value or a list for a list,
    true / false for a switch, and the flag's choices."""
    default = field_default(f)

    def bad(message: str) -> NoReturn:
        raise ValueError(f"{config}: {f.name}: {message}")

    if value is None:
        return None if default is None else bad("expected a value, got nothing")
    if isinstance(default, bool):
        return value if isinstance(value, bool) else bad(f"expected true or false, got {value!r}")
    parse = flag_parser(f)
    many = isinstance(default, list) and not f.metadata.get("whole")
    items = [value] if not many or isinstance(value, str) else value
    if not isinstance(items, list):
        bad(f"expected a list, got {value!r}")
    out = []
    for v in items:
        if parse in (int, float, str):
            kinds = {str: (str,), int: (str, int), float: (str, int, float)}[parse]
            expected = f"expected {dict(int='a whole number', float='a number', str='text')[parse.__name__]}, got {v!r}"
            if isinstance(v, bool) or not isinstance(v, kinds):
                bad(expected)
            try:
                v = parse(v)
            except ValueError:
                bad(expected)
        elif parse is not type(None):
            try:
                v = parse(_as_flag_text(v))
            except (ValueError, argparse.ArgumentTypeError) as e:
                bad(str(e))
        if f.metadata.get("choices") and v not in f.metadata["choices"]:
            bad(f"expected one of {', '.join(map(str, f.metadata['choices']))}, got {v!r}")
        out.append(v)
    return out if many else out[0]


def _as_flag_text(v: Any) -> str:
    """A YAML value written as its flag's text: ``{a: 1}`` -> ``a=1``, ``[1, 1, 3]`` -> ``1,1,3``,
    ``[[1, 1, 2], [1, 1, 3]]`` -> ``1,1,2;1,1,3``."""
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return (";" if any(isinstance(x, (list, tuple)) for x in v) else ",").join(map(_as_flag_text, v))
    return str(v)
