"""``secondthoughts prepare`` end to end on hand-written fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from secondthoughts.cli import main
from secondthoughts.commands.prepare import chain_stats
from secondthoughts.data import Example, read_examples

FIX = Path(__file__).parent / "fixtures" / "data"


def prepare(fmt: str, fixture: str, out: Path, *extra: str) -> int:
    return main(["prepare", "--format", fmt, "--input", str(FIX / fixture), "--output", str(out), *extra])


def test_prepare_writes_examples_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "examples.jsonl"
    assert prepare("moral_stories", "moral_stories.jsonl", out, "--split", "train") == 0
    stdout = capsys.readouterr().out
    assert "4 rows read, 3 examples" in stdout and "left out 1: split is not 'train'" in stdout
    assert f"wrote 3 examples to {out}" in stdout
    assert "edits per example: mean" in stdout and "tokens changed per example: mean" in stdout
    examples = list(read_examples(out))
    assert [e.id for e in examples] == ["ms-1", "ms-2", "ms-4"]
    assert examples[0].meta["norm"] == "It is kind to share."


def test_prepare_stops_on_invalid_rows_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "examples.jsonl"
    assert prepare("moral_stories", "moral_stories_bad.jsonl", out) == 1
    err = capsys.readouterr().err
    assert "moral_stories_bad.jsonl:2: field 'moral_action': missing" in err
    assert not out.exists()


def test_prepare_skip_invalid_groups_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "examples.jsonl"
    assert prepare("moral_stories", "moral_stories_bad.jsonl", out, "--skip-invalid") == 0
    stdout = capsys.readouterr().out
    assert "skipped invalid: 6" in stdout
    assert "3  field 'moral_action'" not in stdout  # reasons differ: missing, identical, empty
    assert "1  field 'moral_action': missing" in stdout
    assert "1  field 'immoral_action': expected a string, got int" in stdout
    assert len(list(read_examples(out))) == 2


def test_prepare_generic_csv_columns_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.jsonl"
    cols = "context=question,source=bad,target=good,id=key"
    assert prepare("csv", "generic.csv", out, "--columns", cols, "--limit", "1") == 0
    assert "stopped at the limit of 1 examples" in capsys.readouterr().out
    assert [e.id for e in read_examples(out)] == ["g1"]


def test_prepare_ethics_reports_unpaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.jsonl"
    assert prepare("ethics-deontology", "deontology.csv", out, "--pairing", "product") == 0
    stdout = capsys.readouterr().out
    assert "7 rows read, 5 examples" in stdout and "unpaired: 1" in stdout


def test_prepare_paradetox_first_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    assert prepare("paradetox", "paradetox.tsv", out, "--first-rewrite") == 0
    assert len(list(read_examples(out))) == 4


def test_prepare_rejects_bad_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        prepare("csv", "generic.csv", tmp_path / "x.jsonl", "--columns", "prompt=q")
    assert e.value.code == 2 and "bad column mapping" in capsys.readouterr().err


def test_prepare_with_nothing_to_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "none.jsonl"
    assert prepare("mic", "mic.csv", out, "--split", "test") == 1
    assert "no examples" in capsys.readouterr().err and not out.exists()


def test_chain_stats_counts_edits_and_changed_tokens() -> None:
    stats = chain_stats([Example("", "the cat sat", "the sat"), Example("", "a b", "a b c d")])
    # one delete of one token; one insert of two tokens
    assert stats["edits per example"].startswith("mean 1.00")
    assert stats["tokens changed per example"].startswith("mean 1.50")
    assert chain_stats([])["edits per example"] == "n/a"


def test_read_options_are_read_datasets_options():
    """prepare's flags come from ReadOptions: the same names and defaults as read_dataset's."""
    import inspect
    from dataclasses import asdict

    from secondthoughts.dataset_readers import ReadOptions, read_dataset

    params = {n: p.default for n, p in inspect.signature(read_dataset).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert asdict(ReadOptions()) == params
