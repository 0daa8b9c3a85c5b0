"""Learning from corrections on a tiny model: data mix, the new run, resume, and what bad input gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from secondthoughts import models
from secondthoughts.cli import main
from secondthoughts.learn import DATA_FILE, INFO_FILE, LearnConfig, learn
from secondthoughts.sft import TrainConfig, train

CORRECTIONS = [
    {"context": "Ana borrowed a pen.", "source": "Ana keeps the pen.", "target": "Ana gives the pen back."},
    {"context": "Bo sees a wallet.", "source": "Bo takes the wallet.", "target": "Bo hands the wallet in."},
    {"context": "Cy is late.", "source": "Cy blames the bus.", "target": "Cy says sorry for being late."},
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    out = tmp_path_factory.mktemp("learn") / "base"
    cfg = TrainConfig(
        data=str(examples_jsonl), model=str(tiny_model_dir), out=str(out), max_length=128, batch_size=2,
        max_steps=2, eval_fraction=0.0, lora_r=4, progress=False, chain_format="inline",
    )  # fmt: skip
    train(cfg)
    return out


def _write(path: Path, rows: list[dict] | list[str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_learn_mixes_corrections_with_replay_and_writes_a_run_that_loads_alone(tmp_path, base_run, examples_jsonl):
    corr = _write(tmp_path / "corr.jsonl", CORRECTIONS)
    cfg = LearnConfig(model=str(base_run), corrections=str(corr), out=str(tmp_path / "mine"), replay=2.0, repeat=2, max_steps=2, progress=False)
    res = learn(cfg)
    out = res.out
    assert res.state.step == 2
    info = json.loads((out / INFO_FILE).read_text())
    assert (info["corrections"], info["replay"], info["skipped"]) == (3, 6, [])
    rows = [json.loads(line) for line in (out / DATA_FILE).read_text().splitlines()]
    # each correction twice, then six replayed training examples (from the run's recorded data)
    assert [r["target"] for r in rows[:6]] == [c["target"] for c in CORRECTIONS for _ in range(2)]
    known = {json.loads(line)["source"] for line in examples_jsonl.read_text().splitlines()}
    assert len(rows) == 12 and all(r["source"] in known for r in rows[6:])
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert (train_cfg["init_from"], train_cfg["chain_format"], train_cfg["eval_fraction"]) == (str(base_run), "inline", 0.0)
    from secondthoughts.realign import Realigner

    r = Realigner(out)
    assert r.chain_format == "inline" and isinstance(r.realign("Ana borrowed a pen.", "Ana keeps the pen.").text, str)
    model, _ = models.load(str(out))
    assert json.loads((out / "model" / "adapter_config.json").read_text())["base_model_name_or_path"] == train_cfg["model"]


def test_learn_resumes_a_killed_run_on_the_data_it_wrote(tmp_path, base_run):
    corr = _write(tmp_path / "corr.jsonl", CORRECTIONS)
    argv = ["learn", "--model", str(base_run), "--corrections", str(corr), "--out", str(tmp_path / "mine"), "--max-steps", "3", "--no-progress"]
    assert main([*argv, "--resume"]) == 1  # nothing to resume yet
    cfg = LearnConfig(model=str(base_run), corrections=str(corr), out=str(tmp_path / "mine"), max_steps=3, progress=False)
    assert learn(cfg, stop_after=1).state.step == 1  # "killed" after its first step
    data = (tmp_path / "mine" / DATA_FILE).read_text()
    corr.write_text("")  # resume reads the data the run wrote, not the corrections file
    assert main(argv) == 1  # the folder holds a run: refused, left as it is
    assert main([*argv, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and (tmp_path / "mine" / DATA_FILE).read_text() == data


def test_bad_input_is_refused_in_one_line_before_a_model_loads(tmp_path, base_run, capsys):
    good = _write(tmp_path / "good.jsonl", CORRECTIONS)
    bad = _write(tmp_path / "bad.jsonl", [json.dumps(CORRECTIONS[0]), '{"source": "x"}', json.dumps(CORRECTIONS[1])])
    (tmp_path / "notrun").mkdir()
    lost = tmp_path / "lost"
    shutil.copytree(base_run, lost)
    cfg = json.loads((base_run / "config.json").read_text())
    cfg["train"]["data"] = str(tmp_path / "gone.jsonl")
    (lost / "config.json").write_text(json.dumps(cfg))
    out = ["--out", str(tmp_path / "mine")]
    cases = [
        (["--model", str(tmp_path / "notrun"), "--corrections", str(good)], "not a trained run"),
        (["--model", str(base_run), "--corrections", str(bad)], "bad.jsonl:2"),
        (["--model", str(lost), "--corrections", str(good)], "--replay-data"),
        (["--model", str(base_run), "--corrections", str(tmp_path / "none.jsonl")], "none.jsonl"),
    ]
    for flags, message in cases:
        assert main(["learn", *flags, *out]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "mine").exists()
    # invalid rows are skipped only on request, and each one is named
    assert main(["learn", "--model", str(base_run), "--corrections", str(bad), *out, "--skip-invalid", "--max-steps", "1", "--no-progress"]) == 0
    info = json.loads((tmp_path / "mine" / INFO_FILE).read_text())
    assert info["corrections"] == 2 and len(info["skipped"]) == 1 and "bad.jsonl:2" in info["skipped"][0]
    # a run whose training data is gone learns with --replay 0 or another replay file
    assert main(["learn", "--model", str(lost), "--corrections", str(good), "--out", str(tmp_path / "r0"), "--replay", "0", "--max-steps", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "r0" / INFO_FILE).read_text())["replay"] == 0


PAIRS = [
    {"context": "Ana borrowed a pen.", "source": "Ana keeps the pen.", "chosen": "Ana gives the pen back.", "rejected": "Ana keeps the pen hidden."},
    {"context": "Bo sees a wallet.", "source": "Bo takes the wallet.", "chosen": "Bo hands the wallet in.", "rejected": "Bo takes the wallet home."},
]


def test_learn_from_preference_pairs_trains_dpo_into_a_run_that_loads(tmp_path, base_run, capsys):
    from secondthoughts.realign import Realigner

    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "pref"
    argv = ["learn", "--model", str(base_run), "--pairs", str(pairs), "--out", str(out), "--max-steps", "2", "--batch-size", "1",
            "--grad-accum", "2", "--lr", "0.05", "--beta", "0.2", "--sft-weight", "0.5", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / INFO_FILE).read_text())
    assert info["pairs"] == 2 and info["learn"]["pairs"] == str(pairs)
    dpo = json.loads((out / "config.json").read_text())["dpo"]
    assert (dpo["beta"], dpo["sft_weight"], dpo["batch_size"], dpo["grad_accum"], dpo["max_steps"], dpo["start"]) == (0.2, 0.5, 1, 2, 2, str(base_run))
    r = Realigner(out)
    assert r.chain_format == "inline" and isinstance(r.realign("Ana borrowed a pen.", "Ana keeps the pen.").text, str)
    assert main(argv) == 1  # the folder holds a run: refused, left as it is
    assert json.loads((out / INFO_FILE).read_text()) == info
    assert main([*argv[:5], "--out", str(tmp_path / "other"), "--resume"]) == 1  # DPO restarts, never resumes
    assert "cannot resume" in capsys.readouterr().err


def test_bad_pairs_are_refused_in_one_line_before_a_model_loads(tmp_path, base_run, capsys):
    good = _write(tmp_path / "pairs.jsonl", PAIRS)
    corr = _write(tmp_path / "corr.jsonl", CORRECTIONS)
    cases = [
        ([json.dumps(PAIRS[0]), json.dumps({**PAIRS[1], "chosen": None})], "pairs.jsonl:2: field 'chosen': missing"),
        ([json.dumps({**PAIRS[0], "rejected": " Ana gives the pen  back."})], "pairs.jsonl:1: field 'rejected': identical to 'chosen'"),
        (["[1, 2]"], "pairs.jsonl:1: expected a JSON object"),
        ([], "no preference pairs"),
    ]
    out = tmp_path / "mine"
    (tmp_path / "bad").mkdir()
    for rows, message in cases:
        bad = _write(tmp_path / "bad" / "pairs.jsonl", rows)
        assert main(["learn", "--model", str(base_run), "--pairs", str(bad), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    for flags, message in ((["--corrections", str(corr), "--pairs", str(good)], "not both"), (["--pairs", str(good), "--beta", "0"], "beta must be"),
                           (["--pairs", str(good), "--grad-accum", "0"], "grad_accum must be >= 1")):  # fmt: skip
        assert main(["learn", "--model", str(base_run), *flags, "--out", str(out)]) == 1
        assert message in capsys.readouterr().err
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["learn", "--model", str(base_run), "--pairs", str(good), "--out", str(out)]) == 1
    assert "is not an empty folder" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
