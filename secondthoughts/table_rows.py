"""Rows of tables for ``dataset_readers``: RFC 4180 CSV, TSV one record per line, and Hugging Face
dataset splits. Each row comes with its line number, as a record (column -> value) or a
``data.RowError`` naming the field; a header that lacks a required column is a file error."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Sequence
from pathlib import Path

from secondthoughts.data import ROW, DataError, Row, RowError, RowStream, open_text, text_lines, utf8_problem


def _check_header(path: Path, header: list[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:  # every row would fail the same way: a file error, never skipped
        raise DataError(f"{path}:1: field {missing[0]!r}: column missing from the header {header}")


def _record(header: list[str], values: list[str]) -> Row | RowError:
    if len(values) != len(header):
        return RowError(ROW, f"{len(values)} fields where the header has {len(header)}")
    for name, value in zip(header, values):
        if problem := utf8_problem(value):
            return RowError(name, problem)
    return dict(zip(header, values))


def _header(path: Path, names: list[str], required: Sequence[str]) -> list[str]:
    header = [h.strip() for h in names]
    for name in header:
        if problem := utf8_problem(name):
            raise DataError(f"{path}:1: header: {problem}")
    _check_header(path, header, required)
    return header


def csv_rows(path: Path, required: Sequence[str]) -> RowStream:
    """RFC 4180 CSV: quoted fields may span lines; a record's line is where it starts."""
    with open_text(path) as f:
        reader = csv.reader(text_lines(f, path), strict=True)
        try:
            header = _header(path, next(reader, []), required)
            end = reader.line_num
            for values in reader:
                start, end = end + 1, reader.line_num
                if values:  # a blank line is no record
                    yield start, _record(header, values)
        except csv.Error as e:  # broken quoting desynchronizes the rest of the file
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def tsv_rows(path: Path, required: Sequence[str]) -> RowStream:
    """One record per line (ParaDetox's layout); a field may be wrapped in CSV-style quotes.

    Parsing line by line keeps one broken quote from swallowing the lines after it.
    """
    with open_text(path) as f:
        lines = enumerate((t.rstrip("\r\n") for t in text_lines(f, path)), 1)
        _, first = next(lines, (1, ""))
        header = _header(path, first.split("\t"), required)
        for line, text in lines:
            if not text.strip():
                continue
            try:
                values = next(csv.reader([text], delimiter="\t", strict=True))
            except csv.Error as e:
                yield line, RowError(ROW, f"malformed quoting ({e})")
                continue
            yield line, _record(header, values)


def hub_rows(dataset_id: str, split: str, config: str | None, fmt: str) -> RowStream:
    """Rows of a Hugging Face dataset split (``datasets.load_dataset``), numbered from 1; ``fmt``:
    the format its rows are read as, named in the error when it cannot load."""
    try:  # imported here: datasets is slow to import and only this path needs it
        datasets = importlib.import_module("datasets")
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:
        raise DataError(
            f"could not load Hugging Face dataset {dataset_id!r} (config {config!r}, split {split!r}): "
            f"{type(e).__name__}: {e}. Without network access, export it to JSONL or CSV where the network "
            f"allows and read that file with --format {fmt}."
        ) from e
    for i, row in enumerate(ds, 1):
        yield i, dict(row)
