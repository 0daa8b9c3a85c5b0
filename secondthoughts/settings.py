"""Settings dataclasses whose fields become command-line flags (``TrainConfig``, ``RefineConfig``,
``DPOSettings``): the field helper and the dict / YAML reader they share."""

from __future__ import annotations

import json
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
