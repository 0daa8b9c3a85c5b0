"""Settings dataclasses whose fields become command-line flags (``TrainConfig``, ``RefineConfig``,
``DPOSettings``): the field helper and the dict / YAML reader they share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its flag help; list and dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


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
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    from_file = read_yaml(args.config_file, what) if args.config_file else {}
    chosen = {**from_file, **given}
    if args.resume:
        base = saved_section(chosen.get("out", cls.out), section, file)  # type: ignore[attr-defined]
    else:
        base = defaults(chosen) if defaults else {}
    return merged(cls, what, base, from_file, given)
