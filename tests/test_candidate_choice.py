"""benchmarks/candidate_choice.py on rated candidates written here: what each reranker keeps, and a
candidate file that is not the one rated."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "candidate_choice.py"


def _story(k: int, split: str = "t") -> tuple[dict, list[dict]]:
    source = f"Sam{k} keeps the ladder he borrowed and hides it."
    alts = [  # the likelihood prefers the near-copy of the source; readers prefer the short fix
        {"text": f"Sam{k} keeps the ladder he borrowed and hides it well.", "valid": True, "score": -0.5},
        {"text": f"Sam{k} returns the ladder.", "valid": True, "score": -0.9},
        {"text": f"Sam{k} returns the ladder and then goes on and on about the weather for hours.", "valid": True, "score": -0.8},
    ]
    ratings = [(2, 6), (7, 7), (5, 3)]
    labels = [{"id": f"s{k}", "system": f"alt{j}", "split": split, "align": [a, a], "coherence": [c, c],
               "text_sha1": hashlib.sha1(alt["text"].encode()).hexdigest()} for j, (alt, (a, c)) in enumerate(zip(alts, ratings))]  # fmt: skip
    return {"id": f"s{k}", "context": "It is right to return what you borrow.", "source": source, "alternatives": alts}, labels


def _run(tmp_path: Path, rows: list[dict], labels: list[dict], *extra: str, splits: tuple[str, ...] = ("t",)) -> subprocess.CompletedProcess[str]:
    cands, labs = tmp_path / "cands.jsonl", tmp_path / "labels.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labs.write_text("".join(json.dumps(r) + "\n" for r in labels))
    cmd = [sys.executable, str(SCRIPT), "--candidates", str(cands), "--labels", str(labs), "--split", *splits, *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)


def test_what_each_reranker_keeps(tmp_path: Path) -> None:
    stories = [_story(k) for k in range(4)]
    out = _run(tmp_path, [s for s, _ in stories], [lab for _, labs in stories for lab in labs], "--penalties", "0", "0", "--penalties", "3", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 stories, 12 rated candidates (valid, changed)"
    assert "Align 7.00  Coherence 7.00  coherence >= 5 100%  sum 14.00" in lines[1]  # the best by the ratings
    assert "Align 4.67  Coherence 5.33" in lines[2]  # a random one: the mean of all
    assert "Align 2.00  Coherence 6.00" in lines[3]  # the likelihood alone keeps the near-copy
    at = lines.index("likelihood - 3 x similarity - 2 x log words")
    assert "Align 7.00  Coherence 7.00" in lines[at + 1] and "align +5.00" in lines[at + 2]
    fitted = [i for i, line in enumerate(lines) if line.startswith("fitted")]
    assert len(fitted) == 2 and all("Align 7.00" in lines[i + 1] for i in fitted)  # learned from the other stories


def test_scores_with_penalties_in_them_and_the_kept_text(tmp_path: Path) -> None:
    """Scores written by the default decoding already include its penalties: they are added back, from the
    row's score_penalties or --scored-with, so that "the likelihood alone" is the likelihood."""
    from secondthoughts.coherence import log_words, source_similarity

    stories = [_story(k) for k in range(4)]
    rows = [s for s, _ in stories]
    for row in rows:  # stored: the likelihood less 3 x similarity less 2 x log words; realign kept the short fix
        for alt in row["alternatives"]:
            alt["score"] -= 3 * source_similarity(alt["text"], row["source"]) + 2 * log_words(alt["text"])
        row["text"] = row["alternatives"][1]["text"]
    labels = [lab for _, labs in stories for lab in labs]
    recorded = [{**r, "score_penalties": {"source": 3.0, "length": 2.0}} for r in rows]
    for given, extra in ((recorded, ()), (rows, ("--scored-with", "3", "2"))):
        lines = _run(tmp_path, given, labels, *extra, "--penalties", "3", "2").stdout.splitlines()
        assert "Align 2.00  Coherence 6.00" in lines[3]  # the likelihood alone: the near-copy, as in the test above
        assert lines[4].startswith("the text realign kept") and "Align 7.00  Coherence 7.00" in lines[4]
        at = lines.index("likelihood - 3 x similarity - 2 x log words")
        assert "Align 7.00" in lines[at + 1] and "the kept text minus this weighting's: sum +0.00" in lines[at + 3]
    lines = _run(tmp_path, rows, labels).stdout.splitlines()  # told nothing: the stored score is taken as the likelihood
    assert "Align 7.00  Coherence 7.00" in lines[3]


def test_rounds_pooled(tmp_path: Path) -> None:
    stories = [_story(k, split="r1") for k in range(2)] + [_story(k, split="r2") for k in range(2, 5)]
    rows, labels = [s for s, _ in stories], [lab for _, labs in stories for lab in labs]
    assert _run(tmp_path, rows, labels, splits=("r2",)).stdout.startswith("3 stories, 9 rated")  # one round's labels only
    assert _run(tmp_path, rows, labels, splits=("r1", "r2")).stdout.startswith("5 stories, 15 rated")


def test_candidates_that_are_not_the_ones_rated(tmp_path: Path) -> None:
    row, labels = _story(0)
    row["alternatives"][1]["text"] = "Sam0 returns the ladder today."
    out = _run(tmp_path, [row], labels)
    assert out.returncode != 0 and "--candidates line 1: alternative 1 of story s0 is not the text rated (text_sha1 differs)" in out.stderr
    del row["alternatives"]
    out = _run(tmp_path, [row], labels)
    assert "--candidates line 1: field 'alternatives' missing" in out.stderr


def test_versus_another_models_candidates(tmp_path: Path) -> None:
    ours = [_story(k) for k in range(3)]
    theirs = [_story(k, split="v") for k in range(1, 4)]  # stories 1-2 shared; 3 only theirs
    for row, _ in theirs:
        row["alternatives"][1]["score"] = 0.0  # their likelihood prefers the short fix
    versus = tmp_path / "versus.jsonl"
    versus.write_text("".join(json.dumps(r) + "\n" for r, _ in theirs))
    labels = [lab for _, labs in ours + theirs for lab in labs]
    out = _run(tmp_path, [r for r, _ in ours], labels, "--penalties", "0", "0", "--versus", str(versus), "--versus-split", "v")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = lines.index("likelihood - 0 x similarity - 0 x log words")
    assert lines[at + 3].startswith("this model, the stories both have") and "Align 2.00  Coherence 6.00" in lines[at + 3]
    assert "Align 7.00  Coherence 7.00" in lines[at + 4] and "(2 stories)" in lines[at + 4]
    assert "align +5.00" in lines[at + 5] and "coherence +1.00" in lines[at + 5]
    half = _run(tmp_path, [r for r, _ in ours], labels, "--versus", str(versus))
    assert half.returncode != 0 and "--versus and --versus-split go together" in half.stderr
    wrong = _run(tmp_path, [r for r, _ in ours], labels, "--versus", str(versus), "--versus-split", "nope")  # their labels are split v
    assert wrong.returncode != 0 and "--versus: no story with rated candidates (are nope the labels' splits" in wrong.stderr
    twice = _run(tmp_path, [ours[0][0], ours[0][0]], labels)
    assert twice.returncode != 0 and "--candidates line 2: story s0 appears twice" in twice.stderr


def test_write_best_rated_candidates_as_corrections(tmp_path: Path) -> None:
    stories = [_story(k) for k in range(2)]
    rows, labels = [s for s, _ in stories], [lab for _, labs in stories for lab in labs]
    labels[0]["align"], labels[0]["coherence"] = [5, 6], [7, 7]  # story 0's near-copy: the best sum (12.5) but Align 5.5
    labels[1]["align"], labels[1]["coherence"] = [6, 6], [6, 6]  # its fix: 12, both at the floor
    out_file = tmp_path / "best.jsonl"
    out = _run(tmp_path, rows, labels, "--write-best", str(out_file), "--floor", "6")
    assert out.returncode == 0, out.stderr
    written = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(w["id"], w["target"]) for w in written] == [("s0", "Sam0 returns the ladder."), ("s1", "Sam1 returns the ladder.")]
    assert written[0]["source"] == rows[0]["source"] and written[0]["context"] == rows[0]["context"]
    _run(tmp_path, rows, labels, "--write-best", str(out_file), "--floor", "7.5")
    assert out_file.read_text() == ""


def test_write_best_pools_both_models_of_a_story(tmp_path: Path) -> None:
    ours, theirs = _story(0), _story(0, split="v")
    theirs[0]["alternatives"][1]["text"] = "Sam0 gives the ladder back with thanks."
    theirs[1][1]["text_sha1"] = hashlib.sha1(b"Sam0 gives the ladder back with thanks.").hexdigest()
    theirs[1][1]["align"] = [7, 6]  # rated 13, below our fix's 14: ours is kept
    only_theirs = _story(1, split="v")
    versus = tmp_path / "versus.jsonl"
    versus.write_text("".join(json.dumps(r) + "\n" for r in (theirs[0], only_theirs[0])))
    out_file = tmp_path / "best.jsonl"
    labels = ours[1] + theirs[1] + only_theirs[1]
    out = _run(tmp_path, [ours[0]], labels, "--versus", str(versus), "--versus-split", "v", "--write-best", str(out_file))
    assert out.returncode == 0, out.stderr
    assert [(w["id"], w["target"]) for w in map(json.loads, out_file.read_text().splitlines())] == [("s0", "Sam0 returns the ladder."), ("s1", "Sam1 returns the ladder.")]
    theirs[1][2]["align"] = [7, 7]
    theirs[1][2]["coherence"] = [7, 7.5]  # their third text now the best of the story
    _run(tmp_path, [ours[0]], ours[1] + theirs[1] + only_theirs[1], "--versus", str(versus), "--versus-split", "v", "--write-best", str(out_file))
    assert json.loads(out_file.read_text().splitlines()[0])["target"].startswith("Sam0 returns the ladder and then goes on")


def test_skip_unrated_candidates_decoded_again(tmp_path: Path) -> None:
    stories = [_story(k) for k in range(3)]
    rows, labels = [s for s, _ in stories], [lab for _, labs in stories for lab in labs]
    rows[0]["alternatives"][0]["text"] = "Sam0 keeps the ladder and hides it."  # came out otherwise: 2 of 3 rated, the story is dropped
    extra = [f"Sam1 returns the ladder {w}." for w in ("now", "today")]  # story 1: two more rated texts ...
    rows[1]["alternatives"] += [{"text": t, "valid": True, "score": -2.0} for t in extra]
    labels += [{"id": "s1", "system": f"alt{3 + j}", "split": "t", "align": [6, 6], "coherence": [6, 6],
                "text_sha1": hashlib.sha1(t.encode()).hexdigest()} for j, t in enumerate(extra)]  # fmt: skip
    rows[1]["alternatives"].reverse()  # decoded in another order than rated: labels must follow the text
    rows[1]["alternatives"].insert(2, {"text": "Sam1 buys a ladder.", "valid": True, "score": 0.0})  # ... and one unrated: 5 of 6 kept
    out = _run(tmp_path, rows, labels)
    assert out.returncode != 0 and "alternative 0 of story s0 is not the text rated" in out.stderr  # without the flag: stop
    out = _run(tmp_path, rows, labels, "--skip-unrated", "--penalties", "0", "0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "--candidates: dropped 4 alternatives that are not a rated text, 1 stories with under 80% rated"
    assert lines[1] == "2 stories, 8 rated candidates (valid, changed)"
    assert "Align 2.00  Coherence 6.00" in lines[4]  # the likelihood's pick in both: the near-copy, rated by its text, not its index
    unrated = [{**rows[2], "id": "s9"}]  # a story no label rates is skipped, not counted as dropped
    assert _run(tmp_path, rows + unrated, labels, "--skip-unrated").stdout.splitlines()[0] == lines[0]
    wrong = _run(tmp_path, rows, labels, "--skip-unrated", splits=("nope",))
    assert wrong.returncode != 0 and "--candidates: no story with rated candidates (are nope the labels' splits" in wrong.stderr


def test_write_pairs_of_good_and_bad_candidates(tmp_path: Path) -> None:
    stories = [_story(k) for k in range(3)]
    rows, labels = [s for s, _ in stories], [lab for _, labs in stories for lab in labs]
    labels[5]["align"] = [6, 6]  # story 1's rambling fix: (6, 3), still bad by its coherence
    labels[7]["align"], labels[7]["coherence"] = [4, 4], [4, 4]  # story 2's fix: neither good nor bad, so no pair
    out_file = tmp_path / "pairs.jsonl"
    out = _run(tmp_path, rows, labels, "--write-pairs", str(out_file))
    assert out.returncode == 0, out.stderr
    assert "wrote 4 pairs of 2 stories" in out.stdout
    pairs = [json.loads(line) for line in out_file.read_text().splitlines()]
    for k in (0, 1):  # the short fix over each of the two bad ones, once each
        mine = [p for p in pairs if p["id"] == f"s{k}"]
        assert {p["chosen"] for p in mine} == {f"Sam{k} returns the ladder."}
        assert sorted(p["rejected"] for p in mine) == sorted(a["text"] for j, a in enumerate(rows[k]["alternatives"]) if j != 1)
        assert mine[0]["source"] == rows[k]["source"] and mine[0]["context"] == rows[k]["context"]
    for flags in (("--good", "4", "--bad", "4"), ("--pairs-per-story", "0")):
        bad = _run(tmp_path, rows, labels, "--write-pairs", str(out_file), *flags)
        assert bad.returncode != 0 and "--write-pairs needs --good above --bad and --pairs-per-story >= 1" in bad.stderr
    _run(tmp_path, rows, labels, "--write-pairs", str(out_file), "--pairs-per-story", "1", "--bad", "2.5")
    assert [(p["id"], p["rejected"]) for p in map(json.loads, out_file.read_text().splitlines())] == [
        ("s0", "Sam0 keeps the ladder he borrowed and hides it well."), ("s1", "Sam1 keeps the ladder he borrowed and hides it well.")]
