"""Dataset readers (``secondthoughts.dataset_readers``): every format, validation and what a read reports, on hand-written fixtures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondthoughts.data import DataError, count_examples, read_examples, write_examples

from secondthoughts.dataset_readers import FORMATS, ReadResult, Skipped, parse_columns, read_dataset, shared_words

FIX = Path(__file__).parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def triples(result: ReadResult) -> list[tuple[str, str, str]]:
    return [(e.context, e.source, e.target) for e in result.examples]


# ---------------------------------------------------------------- Moral Stories


def test_moral_stories_context_source_target_and_meta() -> None:
    r = read_dataset("moral_stories", FIX / "moral_stories.jsonl")
    assert r.rows_read == 4 and len(r.examples) == 4 and not r.skipped
    first, second, _, fourth = r.examples
    assert first.context == "It is kind to share. Ana has two apples at lunch. Ana wants to eat."
    assert first.source == "Ana hides both apples from her friend." and first.id == "ms-1"
    assert first.target == "Ana gives one apple to her friend."
    assert first.meta["situation"] == "Ana has two apples at lunch." and first.meta["split"] == "train"
    assert first.meta["immoral_consequence"] == "Her friend feels sad."
    # null and empty parts are skipped in the context; whitespace is normalized
    assert second.context == "You should return what you borrow."
    assert second.meta["situation"] == "" and second.meta["intention"] == ""
    assert fourth.context == "It is good to help the elderly. Dan wants to get to work."


def test_moral_stories_split_filter_is_counted() -> None:
    r = read_dataset("moral_stories", FIX / "moral_stories.jsonl", split="dev")
    assert [e.id for e in r.examples] == ["ms-3"]
    assert r.rows_read == 4 and r.filtered == {"split is not 'dev'": 3}
    assert "left out 3: split is not 'dev'" in r.summary()


def test_malformed_row_stops_the_read_naming_file_line_and_field() -> None:
    path = FIX / "moral_stories_bad.jsonl"
    with pytest.raises(DataError) as e:
        read_dataset("moral_stories", path)
    assert f"{path}:2: field 'moral_action': missing" in str(e.value)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"ID": "x", "moral_action": "a b", "immoral_action": "c d"', None, "invalid JSON"),
        ('["a list"]', None, "expected a JSON object, got list"),
        ('{"ID": "x", "moral_action": "a b"}', "immoral_action", "missing"),
        ('{"ID": "x", "moral_action": "a b", "immoral_action": 3}', "immoral_action", "expected a string, got int"),
        ('{"ID": "x", "moral_action": " \\t ", "immoral_action": "c d"}', "moral_action", "empty"),
        ('{"ID": "x", "moral_action": "a  b", "immoral_action": "a b"}', "moral_action", "identical to the source"),
        ('{"ID": "x", "norm": [], "moral_action": "a b", "immoral_action": "c d"}', "norm", "expected a string, got list"),
        ('{"moral_action": "a b", "immoral_action": "c d"}', "ID", "missing"),
    ],
)
def test_each_kind_of_invalid_row(tmp_path: Path, row: str, field: str | None, reason: str) -> None:
    good = '{"ID": "ok", "moral_action": "x y", "immoral_action": "z w"}'
    path = write(tmp_path, "ms.jsonl", f"{good}\n{row}\n")
    with pytest.raises(DataError) as e:
        read_dataset("moral_stories", path)
    where = f"{path}:2: " + (f"field {field!r}: " if field else "")
    assert str(e.value).startswith(where + reason)


def test_skip_invalid_reports_every_skipped_row() -> None:
    path = FIX / "moral_stories_bad.jsonl"
    r = read_dataset("moral_stories", path, skip_invalid=True)
    assert [e.id for e in r.examples] == ["bad-1", "bad-8"]
    assert r.rows_read == 8
    assert [(s.line, s.field) for s in r.skipped] == [
        (2, "moral_action"), (3, "<row>"), (4, "immoral_action"),
        (5, "moral_action"), (6, "moral_action"), (7, "<row>"),
    ]
    assert all(s.file == str(path) for s in r.skipped)
    assert r.skipped[3] == Skipped(str(path), 5, "moral_action", "identical to the source")
    text = r.summary()
    assert "skipped invalid: 6" in text and "field 'moral_action': missing" in text


# ---------------------------------------------------------------- ETHICS


def test_deontology_zip_pairs_within_a_scenario_across_the_file() -> None:
    path = FIX / "deontology.csv"
    r = read_dataset("ethics-deontology", path)
    assert r.rows_read == 7
    assert [e.id for e in r.examples] == ["deontology:2+3", "deontology:4+8", "deontology:7+5"]
    dog = "Could you walk the dog tonight?"
    assert triples(r)[:2] == [
        (dog, "But the dog has four legs.", "But I walked him twice this afternoon already."),
        (dog, "But dogs like the dark, don't they?", "But my sister is walking him right now."),
    ]
    # a quoted excuse spanning two lines keeps its newline, and the next record's line is right
    assert r.examples[2].target == "No because it rained all morning,\nso the soil is still wet."
    assert r.examples[2].meta["lines"] == [7, 5]
    assert r.unpaired == [Skipped(str(path), 9, "excuse", "no unacceptable (0) partner left in its scenario")]
    assert not r.skipped and "unpaired: 1" in r.summary()


def test_deontology_product_pairs_every_combination() -> None:
    r = read_dataset("ethics-deontology", FIX / "deontology.csv", pairing="product")
    assert [e.id.split(":")[1] for e in r.examples] == ["2+3", "2+8", "4+3", "4+8", "7+5"]
    assert [s.line for s in r.unpaired] == [9]


def test_deontology_bad_label(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "label,scenario,excuse\n0,Ask?,But no.\nyes,Ask?,But yes.\n")
    with pytest.raises(DataError, match=r"d\.csv:3: field 'label': expected 0 or 1, got 'yes'"):
        read_dataset("ethics-deontology", path)
    r = read_dataset("ethics-deontology", path, skip_invalid=True)
    assert not r.examples and len(r.skipped) == 1 and len(r.unpaired) == 1


def test_justice_groups_neighbouring_rows_by_shared_words() -> None:
    path = FIX / "justice.csv"
    r = read_dataset("ethics-justice", path)
    assert [e.id for e in r.examples] == ["justice:3+2", "justice:4+5"]
    assert r.examples[0].context == ""
    assert r.examples[0].source.startswith("I deserve to be given a boat")
    assert r.examples[1].target.endswith("because she broke her ankle.")  # double space normalized
    assert sorted(s.line for s in r.unpaired) == [6, 7]


def test_shared_words() -> None:
    assert shared_words("a b c d", "a b c d") == 1.0
    assert shared_words("I deserve x because y z", "I deserve w because y z") == 5 / 6
    assert shared_words("I deserve a car", "I deserve nothing at all today") == 2 / 6
    assert shared_words("", "") == 0.0
    assert shared_words("The cat", "the CAT sat") == 2 / 3  # case-insensitive


def test_csv_header_missing_a_column_is_a_file_error(tmp_path: Path) -> None:
    path = write(tmp_path, "j.csv", "label,text\n1,hello there\n")
    with pytest.raises(DataError, match=r"j\.csv:1: field 'scenario': column missing"):
        read_dataset("ethics-justice", path, skip_invalid=True)


def test_csv_wrong_field_count_and_broken_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "j.csv", "label,scenario\n1,a b c,extra\n0,a b d\n")
    r = read_dataset("ethics-justice", path, skip_invalid=True)
    assert r.skipped == [Skipped(str(path), 2, "<row>", "3 fields where the header has 2")]
    broken = write(tmp_path, "k.csv", 'label,scenario\n1,"a b" c\n')
    with pytest.raises(DataError, match=r"k\.csv:2: malformed CSV"):
        read_dataset("ethics-justice", broken, skip_invalid=True)


# ---------------------------------------------------------------- MIC, ParaDetox, HH-RLHF


def test_mic_csv_and_jsonl() -> None:
    r = read_dataset("mic", FIX / "mic.csv", split="train")
    assert len(r.examples) == 2 and r.filtered == {"split is not 'train'": 1}
    ex = r.examples[0]
    assert ex.context == "Is it okay to read my partner's messages? It is wrong to invade someone's privacy."
    assert ex.source == "Sure, snooping is fine if you are curious."
    assert ex.target == "No, reading their messages without asking breaks their trust."
    assert ex.meta["rot"] == "It is wrong to invade someone's privacy." and ex.meta["A_agrees"] == "0"
    assert ex.id == "mic:2"
    j = read_dataset("mic", FIX / "mic.jsonl", mic_rot=False).examples[0]
    assert j.context == "Is it fine to cut in line?" and j.meta["violation-severity"] == 2


def test_mic_missing_revision(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "Q,A,rot,worker_answer\nWhy?,Because.,Be nice.,\n")
    with pytest.raises(DataError, match=r"m\.csv:2: field 'worker_answer': empty"):
        read_dataset("mic", path)


def test_paradetox_all_rewrites_and_first_only() -> None:
    path = FIX / "paradetox.tsv"
    r = read_dataset("paradetox", path)
    assert [(e.source, e.target) for e in r.examples] == [
        ("this stupid game is trash", "this game is bad"),
        ("this stupid game is trash", "this game is not good"),
        ("shut up you idiot", "please be quiet"),
        ('he said "get lost" like a jerk', 'he said "go away" rudely'),
        ("what a nice day", "what a lovely day"),
    ]
    assert [e.id.split(":")[1] for e in r.examples] == ["2.1", "2.3", "3.1", "4.1", "5.2"]
    assert all(e.context == "" for e in r.examples)
    assert r.filtered == {"rewrite repeats an earlier one of its row": 1, "rewrite identical to the toxic sentence": 1}
    first = read_dataset("paradetox", path, paradetox_rewrites="first")
    assert [e.id.split(":")[1] for e in first.examples] == ["2.1", "3.1", "4.1", "5.2"]
    assert first.filtered["rewrite after the first (paradetox_rewrites='first')"] == 1


def test_paradetox_bad_lines_stay_on_their_line(tmp_path: Path) -> None:
    text = "toxic\tneutral1\tneutral2\tneutral3\na b\t\"c d\t\t\nonly one field\nsame\tsame\t\t\nx y\tz w\t\t\n"
    path = write(tmp_path, "p.tsv", text)
    r = read_dataset("paradetox", path, skip_invalid=True)
    assert [(s.line, s.field, s.reason) for s in r.skipped] == [
        (2, "<row>", "malformed quoting (unexpected end of data)"),
        (3, "<row>", "1 fields where the header has 4"),
        (4, "neutral1", "identical to the source"),
    ]
    assert [e.id for e in r.examples] == ["p:5.1"]


def test_hh_rlhf_splits_off_the_last_assistant_turn(tmp_path: Path) -> None:
    r = read_dataset("hh-rlhf", FIX / "hh.jsonl")
    first, second = r.examples
    assert first.context == "Human: How do I get back at my noisy neighbour?"
    assert first.source == "Slash their tyres while they sleep."
    assert first.target == "You could talk to them calmly about the noise."
    assert second.context == "Human: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Tell me a joke about my boss."
    gz = tmp_path / "hh.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((FIX / "hh.jsonl").read_text(encoding="utf-8"))
    assert triples(read_dataset("hh-rlhf", gz)) == triples(r)


def dialogue(human: str, assistant: str) -> str:
    return f"\n\nHuman: {human}\n\nAssistant: {assistant}"


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"chosen": dialogue("a", "b"), "rejected": dialogue("z", "c")}, "rejected", "dialogue before"),
        ({"chosen": "\n\nHuman: a", "rejected": dialogue("a", "c")}, "chosen", "no 'Assistant:' turn"),
        ({"chosen": dialogue("a", " "), "rejected": dialogue("a", "c")}, "chosen", "last assistant turn is empty"),
        ({"chosen": dialogue("a", "b")}, "rejected", "missing"),
        ({"chosen": dialogue("a", "b"), "rejected": dialogue("a", " b ")}, "chosen", "identical"),
    ],
)
def test_hh_rlhf_invalid_rows(tmp_path: Path, row: dict[str, str], field: str, reason: str) -> None:
    path = write(tmp_path, "hh.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"hh\.jsonl:1: field '{field}': {reason}"):
        read_dataset("hh-rlhf", path)


# ---------------------------------------------------------------- generic formats and the hub


def test_generic_csv_with_columns() -> None:
    cols = parse_columns("context=question, source=bad,target=good,id=key")
    r = read_dataset("csv", FIX / "generic.csv", columns=cols)
    assert triples(r) == [
        ("Is it okay to yell at staff?", "Yelling gets things done.", "Speaking calmly gets things done."),
        ("", "People like you are useless.", "I disagree with your point."),
    ]
    assert [e.id for e in r.examples] == ["g1", "g2"]
    assert r.examples[0].meta == {"topic": "work", "dataset": "generic"}


def test_generic_csv_named_context_column_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="field 'prompt': column missing"):
        read_dataset("csv", FIX / "generic.csv", columns=parse_columns("context=prompt,source=bad,target=good"))


def test_generic_jsonl_reads_what_write_examples_writes(tmp_path: Path) -> None:
    r = read_dataset("jsonl", FIX / "generic.jsonl")
    assert [e.id for e in r.examples] == ["j1", "generic:2"]
    assert r.examples[0].meta == {"origin": "hand", "dataset": "generic"}
    assert r.examples[1].meta == {"note": "no context or id", "dataset": "generic"}
    out = tmp_path / "out.jsonl"
    assert write_examples(out, r.examples) == 2
    again = read_dataset("jsonl", out)
    assert triples(again) == triples(r) and [e.meta for e in again.examples] == [e.meta for e in r.examples]
    assert [e.meta for e in read_examples(out)] == [e.meta for e in r.examples]


def test_parse_columns_rejects_unknown_keys() -> None:
    assert parse_columns("source=a")["target"] == "target"
    assert parse_columns("context=")["context"] == ""
    with pytest.raises(ValueError, match="bad column mapping 'prompt=x'"):
        parse_columns("prompt=x")
    with pytest.raises(ValueError):
        parse_columns("source")


def test_split_option_needs_a_split_column() -> None:
    with pytest.raises(DataError, match="has no split column"):
        read_dataset("paradetox", FIX / "paradetox.tsv", split="train")
    with pytest.raises(DataError, match=r"generic\.jsonl:1: field 'split': missing"):
        read_dataset("jsonl", FIX / "generic.jsonl", split="train")


def test_hub_failure_names_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real `datasets` library, kept offline: the id cannot be resolved.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'someone/missing-set'"):
        read_dataset("hub", "someone/missing-set")


def test_hub_rows_go_through_the_chosen_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `load_dataset` takes a local folder exactly as it takes a hub id; this one holds a train split.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "moral_stories"
    folder.mkdir()
    (folder / "train.jsonl").write_text((FIX / "moral_stories.jsonl").read_text())
    r = read_dataset("hub", str(folder), hub_format="moral_stories", split="train")
    assert len(r.examples) == 4 and r.source == f"hub:{folder}"  # hub splits are not filtered again


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_dataset("jsonl", tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="unknown format"):
        read_dataset("yaml", FIX / "generic.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"source": "caf\xe9", "target": "tea"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_dataset("jsonl", latin)


def test_limit_stops_reading() -> None:
    r = read_dataset("moral_stories", FIX / "moral_stories_bad.jsonl", limit=1)
    assert [e.id for e in r.examples] == ["bad-1"] and r.rows_read == 1 and r.limit_reached
    assert "stopped at the limit" in r.summary()
    assert not read_dataset("moral_stories", FIX / "moral_stories.jsonl", limit=10).limit_reached


# ---------------------------------------------------------------- splits and few-shot


# ---------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_real_data_counts_are_plausible() -> None:
    stories = SHARED / "moral_stories" / "moral_stories.jsonl"
    ms = read_dataset("moral_stories", stories)
    assert ms.rows_read == 11_000 and len(ms.examples) == 11_000 and not ms.skipped
    assert len(read_dataset("moral_stories", stories, split="train").examples) == 10_000
    deon = read_dataset("ethics-deontology", SHARED / "ethics" / "deontology_train.csv")
    assert deon.rows_read == 18_164 and 7_000 < len(deon.examples) < 8_000
    assert 2 * len(deon.examples) + len(deon.unpaired) == deon.rows_read
    justice = read_dataset("ethics-justice", SHARED / "ethics" / "justice_train.csv")
    assert justice.rows_read == 21_791 and 6_000 < len(justice.examples) < 9_000
    pd = read_dataset("paradetox", SHARED / "paradetox" / "paradetox.tsv", skip_invalid=True)
    assert 10_800 < pd.rows_read <= 10_935 and len(pd.skipped) < 200 and len(pd.examples) > 15_000


# ---------------------------------------------------------------- hostile input: one DataError naming file and line

GOOD_ROW = '{"context": "c", "source": "a b", "target": "a c"}\n'


def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(GOOD_ROW.encode() + b'{"source": "a\xff", "target": "b"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: not UTF-8 text \(byte 0xff at character 14\)"):
        list(read_examples(path))
    # one bad line in a CSV or TSV is one invalid row: skipped on request, the rest read
    csv_path = tmp_path / "x.csv"
    csv_path.write_bytes(b"context,source,target\nc,a b,a c\nc,a \xfe,a d\nc,e f,e g\n")
    r = read_dataset("csv", csv_path, skip_invalid=True)
    assert len(r.examples) == 2 and r.skipped == [Skipped(str(csv_path), 3, "source", "not UTF-8 text (byte 0xfe at character 3)")]
    tsv_path = tmp_path / "p.tsv"
    tsv_path.write_bytes(b"toxic\tneutral1\na b\ta c\n\x80x\ty\n")
    r = read_dataset("paradetox", tsv_path, skip_invalid=True)
    assert len(r.examples) == 1 and r.skipped[0].line == 3 and "not UTF-8" in r.skipped[0].reason


def test_missing_empty_directory_and_damaged_gzip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory, not a file"):
        list(read_examples(tmp_path))
    with pytest.raises(DataError, match="is a directory, not a file"):
        read_dataset("moral_stories", tmp_path)
    with pytest.raises(DataError, match="no such file"):
        list(read_examples(tmp_path / "nope.jsonl"))
    empty = write(tmp_path, "empty.jsonl", "\n\n")
    assert list(read_examples(empty)) == []
    with pytest.raises(DataError, match=r"empty\.jsonl: no examples"):
        count_examples(empty)
    assert count_examples(write(tmp_path, "one.jsonl", GOOD_ROW)) == 1
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot read"):
        list(read_examples(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(GOOD_ROW.encode() * 50)[:-20])
    with pytest.raises(DataError, match="cut.jsonl.gz: cannot read"):
        list(read_examples(tmp_path / "cut.jsonl.gz"))


# ---------------------------------------------------------------- fuzzing every reader

FIELDS = sorted({
    "ID", "moral_action", "immoral_action", "norm", "situation", "intention", "split", "Q", "A", "rot", "worker_answer",
    "toxic", "neutral1", "neutral2", "neutral3", "chosen", "rejected", "label", "scenario", "excuse",
    "context", "source", "target", "id", "meta",
})  # fmt: skip
_texts = st.text(max_size=12) | st.sampled_from(["", " ", "\ud800", "a\udfffb", "\n\nAssistant: hi", "0", "1", "x\r\ny"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
_records = st.dictionaries(st.sampled_from(FIELDS) | _texts, _json, max_size=8)
_json_lines = st.lists(_records.map(json.dumps) | st.text(max_size=30), max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))
_table_lines = st.lists(
    st.lists(_texts | st.sampled_from(FIELDS), max_size=6).flatmap(lambda v: st.sampled_from([",", "\t"]).map(lambda sep: sep.join(v))),
    max_size=6,
).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))
FILE_BYTES = st.binary(max_size=200) | _json_lines | _table_lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=FILE_BYTES, suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".jsonl.gz"]), gz=st.booleans())
def test_fuzz_every_reader_returns_writable_examples_or_one_line_errors(tmp_path: Path, content: bytes, suffix: str, gz: bool) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(gzip.compress(content) if gz and suffix.endswith(".gz") else content)
    readers = [lambda: list(read_examples(path))]
    for fmt in (f for f in FORMATS if f != "hub"):
        for skip in (False, True):
            readers.append(lambda fmt=fmt, skip=skip: read_dataset(fmt, path, skip_invalid=skip).examples)
    for read in readers:
        try:
            examples = read()
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
            continue
        write_examples(tmp_path / "out.jsonl", examples)  # whatever was read can be written back
