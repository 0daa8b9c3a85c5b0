"""Examples (context, value-unaligned source, value-aligned target): the JSONL they are stored in,
the package's one reader of JSONL rows (UTF-8 with or without BOM, ``.gz``, blank lines skipped,
a bad line named by file and line), the checks every pair passes, and seeded splits.

Public datasets are read into examples by ``dataset_readers.read_dataset``. Splits and few-shot
samples rank examples by a seeded hash of their id: the same seed gives the same parts whatever
the input order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO


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
    """Write normalized examples as JSONL atomically (:func:`atomic.open_atomic`). Returns the count."""
    from secondthoughts.atomic import open_atomic

    n = 0
    with open_atomic(path) as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_examples(path: str | os.PathLike[str]) -> Iterator[Example]:
    """Read normalized examples (the JSONL that ``prepare`` and ``write_examples`` write).

    Strict on structure, lenient on content: texts are taken as written (model outputs may,
    for instance, repeat their source).
    """
    for lineno, row in jsonl_rows(Path(path)):
        if isinstance(row, RowError):
            raise DataError(row.message(str(path), lineno))
        for key in ("source", "target"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{path}:{lineno}: field {key!r} is missing or not a string")
        ctx = row.get("context", "")
        if not isinstance(ctx, str):
            raise DataError(f"{path}:{lineno}: field 'context' is not a string")
        meta = row.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError(f"{path}:{lineno}: field 'meta': expected an object, got {type(meta).__name__}")
        ex_id = str(row.get("id", f"{Path(path).name}:{lineno}"))
        yield Example(ctx, row["source"], row["target"], ex_id, meta)


def read_run_examples(data: str, eval_data: str, eval_max: int, what: str = "training data") -> tuple[list[Example], list[Example]]:
    """A run's examples (at least one) and its held-out ones (``eval_data``'s first ``eval_max``;
    none without it). ``what`` names the examples in the error of an empty ``data``."""
    if not data:
        raise ValueError(f"no {what}: pass --data examples.jsonl")
    train = list(read_examples(data))
    if not train:
        raise ValueError(f"{data} holds no examples")
    return train, list(read_examples(eval_data))[:eval_max] if eval_data else []


def count_examples(path: str | os.PathLike[str]) -> int:
    """Read every example of ``path`` before anything slow starts: how many there are, or
    DataError naming the first bad line (or saying that there is none)."""
    n = sum(1 for _ in read_examples(path))
    if n == 0:
        raise DataError(f"{path}: no examples (the file is empty)")
    return n


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be written out as UTF-8 (a lone surrogate, which JSON's ``\\ud800``
    escapes can produce), or None. One rule for every reader and entry point."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"contains a lone surrogate (U+{ord(text[e.start]):04X}): not valid Unicode text"
    return None


# ---------------------------------------------------------------- row sources

ROW = "<row>"  # the "field" of a problem with the whole record


class RowError(Exception):
    """Why a record of a file is not a usable row: the field (``ROW`` for the whole record) and
    the reason; :meth:`message` says it with the file and line."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field, self.reason = field, reason

    def message(self, file: str, line: int) -> str:
        where = f"field {self.field!r}: " if self.field != ROW else ""
        return f"{file}:{line}: {where}{self.reason}"


Row = Mapping[str, Any]
RowStream = Iterator[tuple[int, Row | RowError]]  # (line, record or why it is not one)


def open_text(path: Path) -> TextIO:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    # utf-8-sig drops a BOM, which would otherwise glue itself to the first column name. Bytes
    # that are not UTF-8 become lone surrogates (surrogateescape), so that the line holding them
    # is reported (utf8_problem) instead of the whole read failing.
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def text_lines(f: TextIO, path: Path) -> Iterator[str]:
    """The lines of an open file; a damaged .gz is a DataError, not a traceback."""
    try:
        yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def utf8_problem(text: str) -> str | None:
    """Where ``text`` (read with surrogateescape) held bytes that are not UTF-8."""
    if text.isascii():
        return None
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"not UTF-8 text (byte 0x{ord(ch) - 0xDC00:02x} at character {i + 1})"
    return None


def _surrogate_field(row: dict[str, Any]) -> RowError | None:
    """The field of a JSON record holding a lone surrogate (a ``\\ud800`` escape), anywhere in it."""
    for key, value in row.items():
        stack: list[Any] = [key, value]  # a loop, not recursion: the JSON may nest deeply
        while stack:
            x = stack.pop()
            if isinstance(x, str):
                if problem := text_problem(x):
                    return RowError(key if not text_problem(key) else ROW, problem)
            elif isinstance(x, dict):
                stack.extend(x.keys())
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
    return None


def _json_record(text: str) -> Row | RowError:
    if problem := utf8_problem(text):
        return RowError(ROW, problem)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return RowError(ROW, f"invalid JSON at column {e.colno} ({e.msg.removesuffix(' starting at')})")
    except RecursionError:
        return RowError(ROW, "invalid JSON (nested too deeply)")
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return RowError(ROW, f"invalid JSON ({e})")
    if not isinstance(row, dict):
        return RowError(ROW, f"expected a JSON object, got {type(row).__name__}")
    return _surrogate_field(row) or row


def jsonl_rows(path: Path) -> RowStream:
    """(line, record or :class:`RowError`) of each non-blank line of a JSONL file: the package's
    one JSONL reader (UTF-8 with or without BOM, .gz, blank lines skipped)."""
    with open_text(path) as f:
        for line, text in enumerate(text_lines(f, path), 1):
            if text.strip():
                yield line, _json_record(text)


def clean_text(text: str) -> str:
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def pair_problem(source: str, target: str) -> str | None:
    """Why (source, target) cannot be a training pair, or None. The one rule that every entry
    point applies (the readers, ``prepare``, the editor's save); texts compare normalized."""
    if clean_text(source) == clean_text(target):
        return "identical to the source"
    return None


# ---------------------------------------------------------------- splits and few-shot samples


def _rank(ex: Example, seed: int) -> bytes:
    # Hashing the id (the content when there is none) makes the order independent of the
    # input order: the same examples in any order land in the same parts.
    key = ex.id or "\x1f".join((ex.context, ex.source, ex.target))
    return hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=16).digest()


def shuffled(examples: Iterable[Example], seed: int = 0) -> list[Example]:
    """A seeded permutation that depends on the examples' ids, not on their order.

    Examples sharing an id (and empty-id examples with the same text) keep their input order.
    """
    return sorted(examples, key=lambda ex: _rank(ex, seed))


def _part_sizes(parts: Mapping[str, float | int | None], n: int) -> dict[str, int]:
    values = list(parts.values())
    if any(isinstance(v, bool) or (v is not None and v < 0) for v in values):
        raise ValueError(f"split sizes must be non-negative numbers or None, got {dict(parts)}")
    if any(isinstance(v, float) for v in values):
        if not all(isinstance(v, float) for v in values) or sum(values) > 1 + 1e-9:  # type: ignore[arg-type]
            raise ValueError(f"fractions must all be floats summing to at most 1, got {dict(parts)}")
        # Cumulative rounding: the sizes add up to round(total * n), n when the fractions sum to 1.
        bounds, cum = [0], 0.0
        for v in values:
            cum += v  # type: ignore[operator]
            bounds.append(n if abs(cum - 1) < 1e-9 else round(cum * n))
        return {k: bounds[i + 1] - bounds[i] for i, k in enumerate(parts)}
    if sum(v is None for v in values) > 1:
        raise ValueError("at most one part may take the rest (None)")
    fixed = sum(v for v in values if v is not None)
    if fixed > n:
        raise ValueError(f"split sizes {dict(parts)} ask for {fixed} examples, only {n} given")
    return {k: n - fixed if v is None else int(v) for k, v in parts.items()}


def split_examples(
    examples: Iterable[Example], parts: Mapping[str, float | int | None], seed: int = 0
) -> dict[str, list[Example]]:
    """Deterministic, order-independent split into named parts.

    ``parts`` holds either fractions (floats summing to at most 1) or sizes (ints; one part may be
    ``None`` for the rest): ``{"train": 0.9, "dev": 0.1}``, ``{"dev": 500, "train": None}``.
    Examples are ranked by a seeded hash of their id and cut in the order the parts are given.
    Exact sizes come at a price: adding examples can move others across a cut.
    """
    ranked = shuffled(examples, seed)
    out, start = {}, 0
    for name, size in _part_sizes(parts, len(ranked)).items():
        out[name], start = ranked[start : start + size], start + size
    return out


def few_shot(examples: Iterable[Example], k: int, seed: int = 0) -> list[Example]:
    """``k`` examples chosen by the same seeded id hash as :func:`split_examples`."""
    ranked = shuffled(examples, seed)
    if not 0 <= k <= len(ranked):
        raise ValueError(f"cannot take {k} few-shot examples from {len(ranked)}")
    return ranked[:k]
