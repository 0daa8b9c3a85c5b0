"""Dataset readers: the rows of public datasets as :class:`~secondthoughts.data.Example` records.

One dispatcher, :func:`read_dataset`, turns the rows of a public dataset into :class:`Example`
records and says what it did with every row (:class:`ReadResult`):

=================  ==========================================  ================  ===============
format             context                                     source            target
=================  ==========================================  ================  ===============
moral_stories      norm + situation + intention                immoral_action    moral_action
ethics-deontology  scenario                                    excuse, label 0   excuse, label 1
ethics-justice     (empty)                                     scenario, 0       scenario, 1
mic                Q + rot                                     A                 worker_answer
paradetox          (empty)                                     toxic             neutral1..3
hh-rlhf            dialogue before the last assistant turn     rejected turn     chosen turn
jsonl / csv        configurable columns                        ...               ...
hub                a Hugging Face dataset read by one of the formats above
=================  ==========================================  ================  ===============

Rules shared by every format:

* Text is normalized: stripped, runs of spaces and tabs collapsed to one space, newlines kept.
  Tokens carry their leading whitespace (``edits.tokenize``), so a stray double space would
  otherwise show up as an edit.
* A row is *invalid* when a required field is missing, not a string, or empty after
  normalization, when source and target are identical (an empty chain of edits teaches no
  re-alignment and usually marks a copy error), or when the line is not a record (bad JSON,
  wrong number of CSV fields). An invalid row stops the read with :class:`DataError` naming
  file, line and field, unless ``skip_invalid``: then it is listed in ``ReadResult.skipped``.
  A row with several examples is valid or invalid as a whole; ParaDetox rewrites that copy the
  toxic sentence or repeat another rewrite are left out (and counted) instead, so a row is
  invalid only when no rewrite remains.
* Nothing is dropped silently: rows left out on request (another ``split``) or duplicate
  rewrites are counted in ``ReadResult.filtered``; ETHICS rows without a partner of the other
  label are listed in ``ReadResult.unpaired`` (they are data, not errors).

Pairing rules (ETHICS, see :func:`_pair_group`): within one scenario, unacceptable (label 0)
and acceptable (label 1) rows are paired in file order, ``zip``-style (the i-th 0 with the
i-th 1); ``pairing="product"`` pairs every 0 with every 1 instead.

* deontology: a scenario is the exact normalized ``scenario`` text, wherever it occurs in the
  file (the same request recurs in separate runs of rows).
* justice: a scenario is a run of neighbouring rows that each share at least
  ``JUSTICE_MIN_SHARED`` of the longer row's words with the run's first row, counting a common
  word prefix plus a common word suffix, case-insensitively. The dataset varies one slot of a
  sentence template ("I deserve X because Y", "I usually X but didn't because Y"), so rows of
  one scenario agree at the start and/or the end.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice, product
from pathlib import Path
from typing import Any, Literal, NamedTuple

from secondthoughts.data import (
    ROW,
    DataError,
    Example,
    Row,
    RowError,
    RowStream,
    clean_text,
    jsonl_rows,
    pair_problem,
)
from secondthoughts.settings import parsed, setting
from secondthoughts.table_rows import csv_rows, hub_rows, tsv_rows

# ---------------------------------------------------------------- results


class Skipped(NamedTuple):
    """A row left out of the examples: where it is and why."""

    file: str
    line: int
    field: str
    reason: str


@dataclass
class ReadResult:
    """What one read produced, and what it did with every row it did not turn into examples."""

    examples: list[Example]
    rows_read: int = 0  # records consumed (data lines; a CSV record may span lines)
    skipped: list[Skipped] = field(default_factory=list)  # invalid rows (only with skip_invalid)
    unpaired: list[Skipped] = field(default_factory=list)  # ETHICS rows without a partner
    filtered: Counter[str] = field(default_factory=Counter)  # reason -> rows left out on request
    source: str = ""
    limit_reached: bool = False  # reading stopped at ``limit`` examples; counts cover what was read

    def leave_out(self, reason: str, n: int = 1) -> None:
        if n:
            self.filtered[reason] += n

    @staticmethod
    def grouped(entries: Iterable[Skipped]) -> list[tuple[str, int]]:
        """Reasons with counts, most frequent first: ``("field 'x': empty", 3)``."""
        counts = Counter(f"field {s.field!r}: {s.reason}" if s.field != ROW else s.reason for s in entries)
        return counts.most_common()

    def summary(self) -> str:
        lines = [f"{self.source}: {self.rows_read} rows read, {len(self.examples)} examples"]
        if self.limit_reached:
            lines.append(f"  stopped at the limit of {len(self.examples)} examples; counts cover the rows read")
        for reason, n in self.filtered.most_common():
            lines.append(f"  left out {n}: {reason}")
        for title, entries in (("skipped invalid", self.skipped), ("unpaired", self.unpaired)):
            if entries:
                lines.append(f"  {title}: {len(entries)}")
                lines.extend(f"    {n:>7}  {reason}" for reason, n in self.grouped(entries))
        return "\n".join(lines)


# ---------------------------------------------------------------- options

FORMATS = ("moral_stories", "ethics-deontology", "ethics-justice", "mic", "paradetox", "hh-rlhf", "jsonl", "csv", "hub")
COLUMN_KEYS = ("context", "source", "target", "id", "split")
DEFAULT_COLUMNS: dict[str, str] = {k: k for k in COLUMN_KEYS}
# "Neighbouring rows share most of their words": most = half. On justice_train.csv (21,791 rows)
# 0.5 gives 7,372 zip pairs; 0.4 gives 7,683 and 0.6 gives 6,197. Rows between 0.3 and 0.5 are
# mostly long varying slots of one scenario, but below 0.5 a bare template prefix ("I am
# justified in expecting that") can join unrelated rows, so the stricter rule wins.
JUSTICE_MIN_SHARED = 0.5
Pairing = Literal["zip", "product"]


@dataclass(frozen=True)
class _Options:  # the keyword arguments of read_dataset, documented there
    skip_invalid: bool
    split: str | None
    limit: int | None
    columns: Mapping[str, str]
    paradetox_rewrites: Literal["all", "first"]
    pairing: Pairing
    mic_rot: bool
    hub_format: str
    hub_config: str | None


def parse_columns(spec: str) -> dict[str, str]:
    """``"context=Q,source=A,target=B"`` -> a full column map (unnamed keys keep their defaults)."""
    cols = dict(DEFAULT_COLUMNS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, name = part.partition("=")
        key = key.strip()
        if not sep or key not in COLUMN_KEYS:
            keys = ", ".join(COLUMN_KEYS)
            raise ValueError(f"bad column mapping {part!r}: expected KEY=COLUMN with KEY one of {keys}")
        cols[key] = name.strip()
    return cols


# ---------------------------------------------------------------- fields




def optional_text(row: Row, key: str) -> str:
    """A string field that may be absent or null ("" then)."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(key, f"expected a string, got {type(value).__name__}")
    return clean_text(value)


def required_text(row: Row, key: str) -> str:
    if row.get(key) is None:
        raise RowError(key, "missing")
    value = optional_text(row, key)
    if not value:
        raise RowError(key, "empty")
    return value


def _join(parts: Iterable[str]) -> str:
    return " ".join(p for p in parts if p)


def _example(context: str, source: str, target: str, id: str, meta: dict[str, Any], target_field: str) -> Example:
    if reason := pair_problem(source, target):
        raise RowError(target_field, reason)
    return Example(context, source, target, id, meta)


def _label(row: Row, key: str = "label") -> int:
    value = row.get(key)
    if value is None:
        raise RowError(key, "missing")
    if isinstance(value, bool) or str(value).strip() not in ("0", "1"):
        raise RowError(key, f"expected 0 or 1, got {value!r}")
    return int(str(value).strip())


# ---------------------------------------------------------------- reading machinery


class _Reader:
    """One read: options, where rows come from, and the result that records every row."""

    def __init__(self, fmt: str, path: str, opts: _Options) -> None:
        self.fmt, self.path, self.opts = fmt, path, opts
        self.file = f"hub:{path}" if fmt == "hub" else path
        self.stem = Path(path).name.split(".")[0] if fmt != "hub" else path.replace("/", "_")
        self.result = ReadResult(examples=[], source=self.file)

    def rows(self, required: Sequence[str], container: str) -> RowStream:
        """Rows from the hub, or from the file: the generic formats name their container, the
        others go by the file's extension (``container`` when it has no known one)."""
        if self.fmt == "hub":
            return hub_rows(self.path, self.opts.split or "train", self.opts.hub_config, self.opts.hub_format)
        path = Path(self.path)
        suffixes = [s.lower().lstrip(".") for s in path.suffixes if s.lower() != ".gz"]
        ext = next((s for s in reversed(suffixes) if s in ("jsonl", "json", "csv", "tsv")), container)
        if self.fmt == "jsonl" or (self.fmt != "csv" and ext in ("jsonl", "json")):
            return jsonl_rows(path)
        return tsv_rows(path, required) if ext == "tsv" else csv_rows(path, required)

    def invalid(self, line: int, e: RowError) -> None:
        if not self.opts.skip_invalid:
            raise DataError(e.message(self.file, line) + " (use skip_invalid / --skip-invalid to skip such rows)")
        self.result.skipped.append(Skipped(self.file, line, e.field, e.reason))

    def valid_rows(self, rows: RowStream, split_key: str | None) -> Iterator[tuple[int, Row]]:
        """Count rows, handle those that are not records, apply the split filter."""
        for line, row in rows:
            self.result.rows_read += 1
            if isinstance(row, RowError):
                self.invalid(line, row)
                continue
            if self.opts.split is not None and self.fmt != "hub":
                if split_key is None:
                    raise DataError(f"{self.file}: format {self.fmt!r} has no split column; drop the split option")
                if row.get(split_key) is None:
                    self.invalid(line, RowError(split_key, "missing (needed to select a split)"))
                    continue
                if str(row[split_key]) != self.opts.split:
                    self.result.leave_out(f"split is not {self.opts.split!r}")
                    continue
            yield line, row

    def each_row(
        self, rows: RowStream, convert: Callable[[Row, int], list[Example]], split_key: str | None = None
    ) -> Iterator[Example]:
        """Row-wise formats: each valid row gives one or more examples, or is invalid as a whole."""
        for line, row in self.valid_rows(rows, split_key):
            try:
                examples = convert(row, line)
            except RowError as e:
                self.invalid(line, e)
                continue
            yield from examples

    def default_id(self, line: int) -> str:
        return f"{self.stem}:{line}"


# ---------------------------------------------------------------- row-wise formats


def _moral_stories(r: _Reader) -> Iterator[Example]:
    def convert(row: Row, line: int) -> list[Example]:
        # The context sentences stay apart in meta: the reward model uses them as hard negatives.
        parts = {k: optional_text(row, k) for k in ("norm", "situation", "intention")}
        extra = {k: optional_text(row, k) for k in ("moral_consequence", "immoral_consequence", "split")}
        meta = {"dataset": "moral_stories", **parts, **extra}
        ctx = _join(parts.values())
        source, target = required_text(row, "immoral_action"), required_text(row, "moral_action")
        return [_example(ctx, source, target, required_text(row, "ID"), meta, "moral_action")]

    return r.each_row(r.rows(("ID", "moral_action", "immoral_action"), "jsonl"), convert, "split")


MIC_META = ("Q", "rot", "A_agrees", "rot-agree", "violation-severity", "split")


def _mic(r: _Reader) -> Iterator[Example]:
    def convert(row: Row, line: int) -> list[Example]:
        ctx = _join((required_text(row, "Q"), required_text(row, "rot"))) if r.opts.mic_rot else required_text(row, "Q")
        # Numeric annotations arrive as numbers from JSONL and strings from CSV; kept as given.
        meta = {"dataset": "mic", **{k: row[k] for k in MIC_META if row.get(k) is not None}}
        source, target = required_text(row, "A"), required_text(row, "worker_answer")
        return [_example(ctx, source, target, r.default_id(line), meta, "worker_answer")]

    required = ("Q", "A", "worker_answer") + (("rot",) if r.opts.mic_rot else ())
    return r.each_row(r.rows(required, "csv"), convert, "split")


PARADETOX_REWRITES = ("neutral1", "neutral2", "neutral3")


def _paradetox(r: _Reader) -> Iterator[Example]:
    def convert(row: Row, line: int) -> list[Example]:
        toxic = required_text(row, "toxic")
        given = [(k, optional_text(row, k)) for k in PARADETOX_REWRITES]
        given = [(k, text) for k, text in given if text]
        rewrites: dict[str, str] = {}  # text -> column; the first occurrence wins
        for k, text in given:
            rewrites.setdefault(text, k)
        # A rewrite equal to the toxic sentence (nothing to detoxify) is left out, not fatal,
        # while the row has another one: the row is invalid only when it yields nothing.
        copied = rewrites.pop(toxic, None)
        if not rewrites:
            if copied:
                raise RowError(copied, "identical to the source")
            raise RowError(PARADETOX_REWRITES[0], "empty (no neutral rewrite)")
        chosen = list(rewrites.items())[: 1 if r.opts.paradetox_rewrites == "first" else None]
        n_copied = int(copied is not None)
        r.result.leave_out("rewrite identical to the toxic sentence", n_copied)
        r.result.leave_out("rewrite repeats an earlier one of its row", len(given) - len(rewrites) - n_copied)
        r.result.leave_out("rewrite after the first (paradetox_rewrites='first')", len(rewrites) - len(chosen))
        meta = {"dataset": "paradetox"}
        return [Example("", toxic, text, f"{r.default_id(line)}.{k[-1]}", {**meta, "rewrite": k}) for text, k in chosen]

    return r.each_row(r.rows(("toxic", "neutral1"), "tsv"), convert)


HH_ASSISTANT = "\n\nAssistant:"


def _last_turn(row: Row, key: str) -> tuple[str, str]:
    """Split a dialogue into (what precedes the last assistant turn, that turn's text)."""
    if row.get(key) is None:
        raise RowError(key, "missing")
    text = row[key]
    if not isinstance(text, str):
        raise RowError(key, f"expected a string, got {type(text).__name__}")
    i = text.rfind(HH_ASSISTANT)
    if i < 0:
        raise RowError(key, "no 'Assistant:' turn")
    turn = clean_text(text[i + len(HH_ASSISTANT) :])
    if not turn:
        raise RowError(key, "last assistant turn is empty")
    return clean_text(text[:i]), turn


def _hh_rlhf(r: _Reader) -> Iterator[Example]:
    def convert(row: Row, line: int) -> list[Example]:
        context, target = _last_turn(row, "chosen")
        rejected_context, source = _last_turn(row, "rejected")
        if rejected_context != context:
            raise RowError("rejected", "dialogue before the last assistant turn differs from 'chosen'")
        return [_example(context, source, target, r.default_id(line), {"dataset": "hh-rlhf"}, "chosen")]

    return r.each_row(r.rows(("chosen", "rejected"), "jsonl"), convert)


def _generic(r: _Reader) -> Iterator[Example]:
    cols = r.opts.columns
    mapped = {c for c in cols.values() if c}

    def convert(row: Row, line: int) -> list[Example]:
        ctx = optional_text(row, cols["context"]) if cols["context"] else ""
        id_value = row.get(cols["id"]) if cols["id"] else None
        # Unmapped columns ride along in meta; a "meta" object (our own output) is merged in.
        meta = {k: v for k, v in row.items() if k not in mapped and k != "meta"}
        if isinstance(row.get("meta"), dict):
            meta.update(row["meta"])
        meta.setdefault("dataset", r.stem)
        ex_id = str(id_value) if id_value not in (None, "") else r.default_id(line)
        source, target = required_text(row, cols["source"]), required_text(row, cols["target"])
        return [_example(ctx, source, target, ex_id, meta, cols["target"])]

    # A context column named on purpose must exist (a typo would silently empty every context).
    required = [cols["source"], cols["target"]] + ([cols["context"]] if cols["context"] not in ("", "context") else [])
    return r.each_row(r.rows(required, r.fmt if r.fmt in ("jsonl", "csv") else "jsonl"), convert, cols["split"] or None)


# ---------------------------------------------------------------- ETHICS (paired) formats


@dataclass(frozen=True)
class _Labeled:
    line: int
    label: int
    text: str


def _labeled(r: _Reader, text_key: str, split_key: str | None = None) -> Iterator[tuple[_Labeled, Row]]:
    for line, row in r.valid_rows(r.rows(("label", text_key), "csv"), split_key):
        try:
            yield _Labeled(line, _label(row), required_text(row, text_key)), row
        except RowError as e:
            r.invalid(line, e)


def _pair_group(group: Sequence[_Labeled], pairing: Pairing) -> tuple[list[tuple[_Labeled, _Labeled]], list[_Labeled]]:
    """(unacceptable, acceptable) pairs of one scenario, and the rows left without a partner."""
    bad = [x for x in group if x.label == 0]
    good = [x for x in group if x.label == 1]
    if pairing == "product":
        return list(product(bad, good)), (bad if not good else good if not bad else [])
    n = min(len(bad), len(good))
    return list(zip(bad, good)), bad[n:] + good[n:]


def _pairs_to_examples(
    r: _Reader, groups: Iterable[tuple[str, list[_Labeled]]], text_key: str, dataset: str
) -> Iterator[Example]:
    for context, group in groups:
        pairs, leftovers = _pair_group(group, r.opts.pairing)
        for x in leftovers:
            other = "acceptable (1)" if x.label == 0 else "unacceptable (0)"
            r.result.unpaired.append(Skipped(r.file, x.line, text_key, f"no {other} partner left in its scenario"))
        for src, tgt in pairs:
            meta = {"dataset": dataset, "lines": [src.line, tgt.line]}
            try:
                yield _example(context, src.text, tgt.text, f"{r.stem}:{src.line}+{tgt.line}", meta, text_key)
            except RowError as e:
                r.invalid(tgt.line, e)


def _ethics_deontology(r: _Reader) -> Iterator[Example]:
    # The same request recurs in separate runs of rows, so group over the whole file.
    groups: dict[str, list[_Labeled]] = {}
    for item, row in _labeled(r, "excuse"):
        try:
            groups.setdefault(required_text(row, "scenario"), []).append(item)
        except RowError as e:
            r.invalid(item.line, e)
    return _pairs_to_examples(r, groups.items(), "excuse", "ethics-deontology")


def shared_words(a: str, b: str) -> float:
    """Common word prefix + suffix (case-insensitive), as a fraction of the longer text's words."""
    x, y = a.lower().split(), b.lower().split()
    n = min(len(x), len(y))
    p = next((i for i in range(n) if x[i] != y[i]), n)
    s = next((i for i in range(n - p) if x[-1 - i] != y[-1 - i]), n - p)
    return (p + s) / max(len(x), len(y), 1)


def _justice_groups(items: Iterable[_Labeled]) -> Iterator[tuple[str, list[_Labeled]]]:
    group: list[_Labeled] = []
    for item in items:
        if group and shared_words(group[0].text, item.text) < JUSTICE_MIN_SHARED:
            yield "", group
            group = []
        group.append(item)
    if group:
        yield "", group


def _ethics_justice(r: _Reader) -> Iterator[Example]:
    # The scenario text is itself the source / target, so the context stays empty.
    items = (item for item, _ in _labeled(r, "scenario"))
    return _pairs_to_examples(r, _justice_groups(items), "scenario", "ethics-justice")


_READERS: dict[str, Callable[[_Reader], Iterator[Example]]] = {
    "moral_stories": _moral_stories,
    "ethics-deontology": _ethics_deontology,
    "ethics-justice": _ethics_justice,
    "mic": _mic,
    "paradetox": _paradetox,
    "hh-rlhf": _hh_rlhf,
    "jsonl": _generic,
    "csv": _generic,
}


@dataclass
class ReadOptions:
    """:func:`read_dataset`'s options as settings: the flags of ``secondthoughts prepare``
    (``settings.add_flags``); a test keeps the two in step."""

    skip_invalid: bool = setting(False, "skip malformed rows and report them instead of stopping at the first")
    split: str | None = setting(None, "keep only rows of this split (train, dev); for --format hub, the split to load", type=str)
    limit: int | None = setting(None, "stop after N examples", type=int, metavar="N")
    columns: Mapping[str, str] | None = setting(None, "generic formats: context=COL,source=COL,target=COL,id=COL,split=COL", type=parsed(parse_columns))
    paradetox_rewrites: str = setting("all", "paradetox: only the first neutral rewrite per row (default: all)",
                                      flag="--first-rewrite", const="first")
    pairing: str = setting("zip", "ETHICS: pair the i-th unacceptable row of a scenario with its i-th acceptable row (zip), "
                                  "or every one with every one (product)", choices=("zip", "product"))
    mic_rot: bool = setting(True, "mic: leave the rule of thumb out of the context", flag="--no-rot")
    hub_format: str = setting("jsonl", "hub: the format whose rules read the rows (jsonl = generic columns)",
                              choices=tuple(f for f in FORMATS if f != "hub"))
    hub_config: str | None = setting(None, "hub: dataset configuration name", type=str)


def read_dataset(
    format: str,
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    split: str | None = None,
    limit: int | None = None,
    columns: Mapping[str, str] | None = None,
    paradetox_rewrites: Literal["all", "first"] = "all",
    pairing: Pairing = "zip",
    mic_rot: bool = True,
    hub_format: str = "jsonl",
    hub_config: str | None = None,
) -> ReadResult:
    """Read one dataset file (or, for ``format="hub"``, a Hugging Face dataset id).

    skip_invalid: list invalid rows in ``skipped`` instead of raising :class:`DataError`.
    split: keep only rows whose split column equals this; for ``hub``, the split to load.
    limit: stop reading after this many examples.
    columns: generic formats: which columns hold context / source / target / id / split
        (keys not given keep their names; an empty name means "none").
    paradetox_rewrites: ``"all"`` (one example per distinct neutral rewrite) or ``"first"``.
    pairing: ETHICS: ``"zip"`` or ``"product"`` (see the module docstring).
    mic_rot: MIC: append the rule of thumb to the question in the context.
    hub_format, hub_config: ``hub``: the format whose rules read the rows, and the dataset config.
    """
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    opts = _Options(skip_invalid, split, limit, cols, paradetox_rewrites, pairing, mic_rot, hub_format, hub_config)
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    rows_format = hub_format if format == "hub" else format
    if rows_format not in _READERS:
        raise DataError(f"unknown hub_format {rows_format!r}; expected one of {', '.join(_READERS)}")
    if pairing not in ("zip", "product"):
        raise DataError(f"pairing must be 'zip' or 'product', got {pairing!r}")
    if paradetox_rewrites not in ("all", "first"):
        raise DataError(f"paradetox_rewrites must be 'all' or 'first', got {paradetox_rewrites!r}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    r = _Reader(format, os.fspath(path), opts)
    r.result.examples = list(islice(_READERS[rows_format](r), opts.limit))
    r.result.limit_reached = opts.limit is not None and len(r.result.examples) == opts.limit
    return r.result
