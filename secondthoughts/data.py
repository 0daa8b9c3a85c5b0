"""Examples (context, value-unaligned source, value-aligned target) and dataset readers."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A row that cannot become an Example; the message names file, line and field."""


@dataclass(frozen=True)
class Example:
    context: str
    source: str
    target: str
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_examples(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    """Write normalized examples as JSONL atomically (temp file + rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def read_examples(path: str | os.PathLike[str]) -> Iterator[Example]:
    """Read normalized examples (the JSONL that ``prepare`` and ``write_examples`` write)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("source", "target"):
                if not isinstance(row.get(key), str):
                    raise DataError(f"{path}:{lineno}: field {key!r} is missing or not a string")
            ctx = row.get("context", "")
            if not isinstance(ctx, str):
                raise DataError(f"{path}:{lineno}: field 'context' is not a string")
            yield Example(ctx, row["source"], row["target"], str(row.get("id", f"{Path(path).name}:{lineno}")), row.get("meta") or {})
