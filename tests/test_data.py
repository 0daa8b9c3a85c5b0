"""Examples on disk, the checks every pair passes, and seeded splits (``secondthoughts.data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secondthoughts.data import DataError, Example, few_shot, read_examples, shuffled, split_examples, text_problem

GOOD_ROW = '{"context": "c", "source": "a b", "target": "a c"}\n'


def make(n: int) -> list[Example]:
    return [Example("c", f"s{i}", f"t{i}", f"id{i}") for i in range(n)]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_split_is_deterministic_and_order_independent() -> None:
    exs = make(50)
    a = split_examples(exs, {"train": 0.8, "dev": 0.2}, seed=3)
    b = split_examples(list(reversed(exs)), {"train": 0.8, "dev": 0.2}, seed=3)
    assert a == b and len(a["train"]) == 40 and len(a["dev"]) == 10
    assert {e.id for e in a["train"]} | {e.id for e in a["dev"]} == {e.id for e in exs}
    assert split_examples(exs, {"train": 0.8, "dev": 0.2}, seed=4) != a


def test_split_sizes_fractions_and_rest() -> None:
    exs = make(10)
    assert [len(v) for v in split_examples(exs, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()] == [3, 4, 3]
    assert [len(v) for v in split_examples(exs, {"dev": 3, "train": None}).values()] == [3, 7]
    assert [len(v) for v in split_examples(exs, {"dev": 2, "test": 2}).values()] == [2, 2]
    assert [len(v) for v in split_examples(exs, {"a": 0.5}).values()] == [5]
    for bad in ({"a": 11}, {"a": 0.7, "b": 0.7}, {"a": 0.5, "b": 5}, {"a": None, "b": None}, {"a": -1}, {"a": True}):
        with pytest.raises(ValueError):
            split_examples(exs, bad)


def test_split_without_ids_hashes_the_content() -> None:
    exs = [Example("", f"s{i}", f"t{i}") for i in range(20)]
    assert shuffled(exs, 1) == shuffled(exs[::-1], 1)


def test_few_shot() -> None:
    exs = make(30)
    shots = few_shot(exs, 4, seed=7)
    assert len(shots) == 4 and shots == few_shot(exs[::-1], 4, seed=7)
    assert few_shot(exs, 4, seed=8) != shots
    assert few_shot(exs, 0) == []
    with pytest.raises(ValueError, match="cannot take 31"):
        few_shot(exs, 31)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (GOOD_ROW + '{"source": "a", "tar', ":2: invalid JSON at column 17 (Unterminated string)"),
        (GOOD_ROW + '{"context": "c", "source": "\\ud800", "target": "b"}\n', ":2: field 'source': contains a lone surrogate (U+D800)"),
        (GOOD_ROW + '{"context": "c", "source": "a", "target": "b", "meta": {"x": ["\\udfff"]}}\n', ":2: field 'meta': contains a lone surrogate (U+DFFF)"),
        ('{"source": "a", "target": "b", "\\ud800": 1}\n', ":1: contains a lone surrogate"),
        (GOOD_ROW + "[" * 100_000 + "\n", ":2: invalid JSON (nested too deeply)"),
        ('{"source": "a", "target": "b", "n": ' + "9" * 5000 + "}\n", ":1: invalid JSON (Exceeds the limit"),
        ('{"source": "a", "target": "b", "meta": [1]}\n', ":1: field 'meta': expected an object, got list"),
    ],
)
def test_read_examples_reports_hostile_rows_by_line(tmp_path: Path, content: str, expected: str) -> None:
    path = write(tmp_path, "x.jsonl", content)
    with pytest.raises(DataError) as e:
        list(read_examples(path))
    assert str(e.value).startswith(f"{path}{expected}")


def test_text_problem_is_the_one_rule() -> None:
    assert text_problem("plain") is None and text_problem("héllo ✓") is None
    assert text_problem("a\ud800") == "contains a lone surrogate (U+D800): not valid Unicode text"
