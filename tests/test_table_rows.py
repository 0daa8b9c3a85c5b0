"""secondthoughts.table_rows: CSV and TSV rows with the line each starts on, row errors that name
the field, header errors for the whole file."""

from __future__ import annotations

from pathlib import Path

import pytest

from secondthoughts.data import DataError, RowError
from secondthoughts.table_rows import csv_rows, tsv_rows


def test_csv_records_start_where_they_start_and_bad_rows_say_why(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('source,target\n"Tom hits\nhis brother.",Tom talks.\n\nonly one field\nRose,hopes,too many\n', encoding="utf-8")
    rows = list(csv_rows(path, ["source", "target"]))
    assert rows[0] == (2, {"source": "Tom hits\nhis brother.", "target": "Tom talks."})
    assert [line for line, _ in rows] == [2, 5, 6]  # the blank line 4 is no record
    assert all(isinstance(r, RowError) and "fields where the header has 2" in r.reason for _, r in rows[1:])
    with pytest.raises(DataError, match=r"t.csv:1: field 'context': column missing"):
        list(csv_rows(path, ["context"]))


def test_tsv_keeps_one_broken_quote_to_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text('toxic\tneutral\n"a broken\tquote\nfine\tok\n', encoding="utf-8")
    rows = list(tsv_rows(path, ["toxic", "neutral"]))
    assert isinstance(rows[0][1], RowError) and rows[0][0] == 2 and "malformed quoting" in rows[0][1].reason
    assert rows[1] == (3, {"toxic": "fine", "neutral": "ok"})
