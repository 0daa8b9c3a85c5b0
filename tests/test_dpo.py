"""DPO from a trained run on a tiny model: the direct baseline's pairs, a chain-of-edits run taught by
rated pairs in its own chain format, and the settings' checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from secondthoughts import models
from secondthoughts.data import read_examples
from secondthoughts.decoding import run_info
from secondthoughts.dpo import (
    ChainSpec,
    DPOSettings,
    Preference,
    preference_rows,
    target_over_source,
    train_dpo,
)
from secondthoughts.sft import TrainConfig, train

X = torch.tensor([[5, 400, 7, 401, 9, 12]])  # 400, 401: the run's marker tokens (trained rows carried over)

PAIRS = [
    Preference("Ana borrowed a pen.", "Ana keeps the pen and hides it.", "Ana gives the pen back and says thanks.", "Ana keeps the pen and hides it well."),
    Preference("Bo sees a wallet.", "Bo takes the wallet.", "Bo hands the wallet in.", "Bo takes the wallet home."),
]


def _same(a: str | Path, b: str | Path, atol: float = 1e-5) -> bool:
    ma, _ = models.load(str(a), device="cpu")
    mb, _ = models.load(str(b), device="cpu")
    return torch.allclose(ma(X).logits, mb(X).logits, atol=atol)


@pytest.mark.slow
def test_dpo_with_zero_learning_rate_gives_the_direct_model_back(tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path) -> None:
    from secondthoughts.realign import Realigner

    direct = train(TrainConfig(data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path / "direct"), mode="direct", max_length=128,
                               batch_size=4, max_steps=2, eval_fraction=0.0, lora_r=4, lr=0.05, progress=False)).out  # fmt: skip
    pairs = target_over_source(list(read_examples(examples_jsonl)))
    out = train_dpo(direct, pairs, tmp_path / "dpo", DPOSettings(lora_r=4, max_steps=1, batch_size=4, grad_accum=1, lr=0.0), progress=False)
    assert _same(direct, out)
    assert Realigner(out).default_mode() == "direct"
    info = json.loads((out / "config.json").read_text())
    assert info["train"]["mode"] == "direct" and info["dpo"]["start"] == str(direct)
    trained = train_dpo(direct, pairs, tmp_path / "dpo2", DPOSettings(lora_r=4, max_steps=2, batch_size=4, grad_accum=1, lr=0.05), progress=False)
    assert not _same(direct, trained, atol=1e-4)


@pytest.mark.slow
def test_a_chain_run_learns_from_rated_pairs_in_its_own_chain_format(tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path) -> None:
    from secondthoughts.chain_text import parse_chain
    from secondthoughts.edits import apply_edits, detokenize, tokenize
    from secondthoughts.realign import Realigner
    from secondthoughts.sequences import split_completion

    coe = train(TrainConfig(data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path / "coe"), max_length=128, batch_size=4,
                            max_steps=2, eval_fraction=0.0, lora_r=4, lr=0.05, merge_gap=3, cost_sets=[[1, 1, 3]], progress=False)).out  # fmt: skip
    spec = ChainSpec.of_run(run_info(coe) or {})
    assert spec == ChainSpec((1.0, 1.0, 3.0), 3, "anchored")
    _, tok = models.load(str(coe), device="cpu")
    rows, dropped = preference_rows(tok, PAIRS, 128, spec)
    assert len(rows) == 2 and dropped == []
    for pair, row in zip(PAIRS, rows):
        for text, ids in ((pair.chosen, row["chosen_ids"]), (pair.rejected, row["rejected_ids"])):
            assert ids[-1] == tok.eos_token_id
            chain, written = split_completion(tok.decode(ids[:-1]))
            edits = parse_chain(chain, pair.source, "anchored")  # what the run writes: a chain that applies to the text, then it
            assert written == text and detokenize(apply_edits(tokenize(pair.source), edits)) == text
        assert tok.decode(row["prompt_ids"]).endswith(pair.source + "<|sep|>")
    # merged at gap 3: "keeps" -> "gives" and "and hides it" -> "back and says thanks" are one edit, not two
    assert len(parse_chain(split_completion(tok.decode(rows[0]["chosen_ids"][:-1]))[0], PAIRS[0].source, "anchored")) == 1
    unmerged = ChainSpec.of_run({**(run_info(coe) or {}), "merge_gap": -1})  # how a run saves "not merged"
    assert unmerged is not None and unmerged.merge_gap is None
    assert len(parse_chain(split_completion(tok.decode(preference_rows(tok, PAIRS[:1], 128, unmerged)[0][0]["chosen_ids"][:-1]))[0], PAIRS[0].source, "anchored")) > 1
    # a pair whose source and completions alone exceed max_length is left out, named, rather than cut by TRL
    long = Preference("", "Bo takes the wallet.", "Bo hands the wallet in " + "and says so " * 60 + ".", "Bo takes the wallet home.", "long")
    kept, dropped = preference_rows(tok, [PAIRS[0], long], 128, spec)
    assert len(kept) == 1 and dropped == ["long"] and all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 128 for r in kept)
    with pytest.raises(ValueError, match="no preference pair fits in 16 tokens"):
        train_dpo(coe, [long], tmp_path / "none", DPOSettings(lora_r=4, max_length=16, max_steps=1))
    out = train_dpo(coe, PAIRS * 2, tmp_path / "dpo", DPOSettings(lora_r=4, max_steps=1, batch_size=2, grad_accum=1, lr=0.0, sft_weight=1.0), progress=False)
    assert _same(coe, out)
    info = json.loads((out / "config.json").read_text())
    assert (info["train"]["mode"], info["train"]["merge_gap"], info["dpo"]["pairs"], info["dpo"]["dropped"], info["dpo"]["sft_weight"]) == ("coe", 3, 4, [], 1.0)
    assert Realigner(out).default_mode() == "apply"
    trained = train_dpo(coe, PAIRS * 2, tmp_path / "dpo2", DPOSettings(lora_r=4, max_steps=2, batch_size=2, grad_accum=1, lr=0.05, sft_weight=1.0), progress=False)
    assert not _same(coe, trained, atol=1e-4)
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert log and "train_loss" in log[-1]


def test_pairs_files_and_their_bad_rows(tmp_path: Path) -> None:
    from secondthoughts.data import DataError
    from secondthoughts.dpo import read_preferences

    good = {"context": "Ana borrowed a pen.", "source": "Ana keeps the pen.", "chosen": "Ana gives  the pen back.", "rejected": "Ana keeps it.", "id": 7}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "context": None}) + "\n")
    assert read_preferences(f) == [Preference("Ana borrowed a pen.", "Ana keeps the pen.", "Ana gives the pen back.", "Ana keeps it.", "7"),
                                   Preference("", "Ana keeps the pen.", "Ana gives the pen back.", "Ana keeps it.", "7")]  # fmt: skip
    for row, message in (({**good, "chosen": "Ana keeps  the pen."}, "pairs.jsonl:1: field 'chosen': identical to the source"),
                         ({**good, "rejected": 3}, "pairs.jsonl:1: field 'rejected': expected a string"),
                         ({**good, "source": ""}, "pairs.jsonl:1: field 'source': empty")):  # fmt: skip
        f.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError, match=message):
            read_preferences(f)


def test_settings_and_starts_that_dpo_refuses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sft_weight must be >= 0"):
        DPOSettings.from_dict({"sft_weight": -1})
    with pytest.raises(ValueError, match="sft_weight must be >= 0 and finite, got inf"):
        DPOSettings.from_dict({"sft_weight": float("inf")})
    with pytest.raises(ValueError, match="beta must be a finite number > 0, got 0"):
        DPOSettings.from_dict({"beta": 0})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DPOSettings.from_dict({"batch_size": 0})
    with pytest.raises(ValueError, match="DPO starts from a `secondthoughts train` run"):
        train_dpo(tmp_path, PAIRS, tmp_path / "out", DPOSettings())
