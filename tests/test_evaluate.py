"""Evaluation: metric functions against hand-computed values, the aggregation on hand-written
outputs (a stub re-aligner), perplexity under the base LM of a tiny LoRA run, and the
``secondthoughts evaluate`` command end to end on a tiny run and a tiny reward model."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch

from secondthoughts import evaluate as E
from secondthoughts import models
from secondthoughts.chain_text import render_compact
from secondthoughts.cli import main
from secondthoughts.data import Example, write_examples
from secondthoughts.edits import infer_text_edits
from secondthoughts.readable import render_readable
from secondthoughts.realign import RealignResult
from secondthoughts.sari import Sari, corpus_sari, sentence_sari, tokenize_13a


def _close(a: Sequence[float], b: Sequence[float], tol: float = 1e-9) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


# ---------------------------------------------------------------- SARI, hand-computed


def test_sari_single_reference_hand_computed() -> None:
    # I = "a b c", O = "a d c", R = "a b d".
    # 1-grams: keep P = 1/2 ({a,c} kept, a good), R = 1/2 ({a,b} kept by R) -> F 0.5;
    #          delete {b}, but R keeps b -> P 0; add {d}, R adds {d} -> F 1.
    # 2-grams: nothing kept (P 0/0 = 0); delete {ab, bc}, R deletes bc -> P 1/2; add {ad, dc} vs {bd} -> 0.
    # 3-grams: delete {abc}, R deletes it -> P 1; keep, add 0. 4-grams: none -> 0.
    s = sentence_sari("a b c", "a d c", ["a b d"], tokenize=str.split)
    assert _close(s, Sari(sari=(0.125 + 0.375 + 0.25) / 3, keep=0.5 / 4, delete=1.5 / 4, add=1 / 4))


def test_sari_weights_source_ngrams_by_the_number_of_references() -> None:
    # I = "a b", O = "a", R = ["a b", "a"]: I and O counts doubled, R counts summed: a:2, b:1.
    # 1-grams: kept {a:2}, good {a:2} -> P 1; kept by R {a:2, b:1} -> R (2/2) / 2 = 1/2 -> F 2/3;
    #          deleted {b:2}, good {b:2} - {b:1} = {b:1} -> P (1/2) / 1. Added nothing -> 0.
    # 2-grams: deleted {ab:2}, good {ab:1} -> P 1/2; keep 0.
    s = sentence_sari("a b", "a", ["a b", "a"], tokenize=str.split)
    keep, delete = (2 / 3) / 4, (0.5 + 0.5) / 4
    assert _close(s, Sari((keep + delete) / 3, keep, delete, 0.0))


def test_sari_perfect_rewrite_and_corpus_mean() -> None:
    # O == R with one replaced word: every kept / deleted / added n-gram agrees with R.
    perfect = sentence_sari("he hits the dog", "he pets the dog", ["he pets the dog"], tokenize=str.split)
    # keep: 1-grams P=R=1, 2-grams {the dog} P=R=1, 3-/4-grams none -> (1+1)/4; delete P=1 for 1..4-grams
    # present in I and not in O (1: hits, 2: he hits / hits the, 3: both, 4: the one) -> 4/4;
    # add: 1..3-grams with "pets" -> F 1 each, 4-gram "he pets the dog" -> F 1 -> 4/4.
    assert _close(perfect, Sari((0.5 + 1 + 1) / 3, 0.5, 1.0, 1.0))
    unchanged = sentence_sari("he hits the dog", "he hits the dog", ["he pets the dog"], tokenize=str.split)
    assert unchanged.delete == 0 and unchanged.add == 0  # doing nothing earns no edit credit (0/0 = 0)
    corpus = corpus_sari(["he hits the dog"] * 2, ["he pets the dog", "he hits the dog"], [["he pets the dog"]] * 2)
    assert _close(corpus, [(a + b) / 2 for a, b in zip(perfect, unchanged)])
    with pytest.raises(ValueError, match="lengths differ"):
        corpus_sari(["a"], [], [])


def test_sari_tokenizes_like_easse() -> None:
    assert tokenize_13a("He's rude, isn't he?") == ["he's", "rude", ",", "isn't", "he", "?"]
    # Punctuation and case do not make n-grams differ.
    assert sentence_sari("He hits the dog.", "He pets the dog.", ["he pets the dog ."]).sari == pytest.approx(
        sentence_sari("he hits the dog .", "he pets the dog .", ["he pets the dog ."], tokenize=str.split).sari
    )


# ---------------------------------------------------------------- BLEU, ROUGE-L, bootstrap, perplexity


def test_bleu_hand_computed_and_from_summed_statistics() -> None:
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP 1): BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4).
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    assert E.corpus_bleu([hyp], [ref]) == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25, abs=1e-6)
    outs, refs = [hyp, "a dog barks at night", "he pets the dog"], [ref, "a dog barks loudly at night", "he hits the dog"]
    stats = E.bleu_stats(outs, refs)
    assert stats.shape[0] == 3
    assert E.bleu_from_stats(stats.sum(0)) == pytest.approx(E.corpus_bleu(outs, refs))


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 1, R = 1/2, F = 2/3.
    assert E.rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx([200 / 3])
    assert E.rouge_l(["Dogs bark."], ["dogs barked"]) == pytest.approx([100.0])  # stemmed, case and punctuation ignored


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    assert E.bootstrap_ci(5, lambda i: 0.7, resamples=50) == [0.7, 0.7]
    assert E.bootstrap_ci(0, lambda i: 0.0) is None and E.bootstrap_ci(3, lambda i: 0.0, resamples=0) is None
    vals = [0.0, 1.0] * 20
    a, b = E.mean_ci(vals, 200, seed=3), E.mean_ci(vals, 200, seed=3)
    assert a == b and a["mean"] == 0.5 and a["n"] == 40
    lo, hi = a["ci95"]
    assert 0.25 < lo < 0.5 < hi < 0.75  # std of the mean is 0.079: about +-0.155
    assert E.mean_ci([None, None], 10, 0) == E.missing("no values to average")


def test_corpus_perplexity_weights_by_tokens() -> None:
    rows = [(2 * math.log(4), 2), (math.log(4) * 0, 0), (6 * math.log(2), 6)]  # mean NLL (2 log 4 + 6 log 2) / 8
    assert E.perplexity(rows) == pytest.approx(math.exp((4 * math.log(2) + 6 * math.log(2)) / 8))
    assert math.isnan(E.perplexity([(0.0, 0)]))
    ci = E.perplexity_ci([(math.log(3), 1)] * 4, 20, 0)
    assert ci["corpus"] == pytest.approx(3.0) and ci["ci95"] == pytest.approx([3.0, 3.0]) and ci["tokens"] == 4
    assert E.is_missing(E.perplexity_ci([(0.0, 0)], 20, 0))


def _manual_nll(model: Any, ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


def test_fluency_batches_like_single_texts_and_splits_markers(tiny_tok: Any, tiny_lm: Any) -> None:
    texts = ["Tom talks to his brother.", "Rose", "Hector slowly creeps forward through traffic.", "a <|sep|> b"]
    fl = E.Fluency(tiny_lm, tiny_tok, "tiny", batch_size=3)
    start = tiny_tok.convert_tokens_to_ids("<|endoftext|>")
    assert fl.start_id() == start
    got = fl.nll(texts)
    for text, (nll, n) in zip(texts, got):
        ids = tiny_tok(text, add_special_tokens=False)["input_ids"]
        assert n == len(ids)
        assert nll == pytest.approx(_manual_nll(tiny_lm, [start, *ids]), rel=1e-4)
    models.add_edit_tokens(tiny_lm, tiny_tok)  # now "<|sep|>" is a token of the tokenizer: still scored as text
    assert fl.nll(texts[-1:])[0][1] == got[-1][1]


# ---------------------------------------------------------------- aggregation on hand-written outputs

CTX = "It is wrong to hit people. Tom is angry at his brother."
EXAMPLES = [
    Example(CTX, "Tom hits his brother.", "Tom talks to his brother.", "a"),
    Example("Be kind.", "He is rude to his friend.", "He is kind to his friend.", "b"),
    Example(CTX, "Tom kicks the door.", "Tom takes a deep breath.", "c"),
    Example("Pay friends back.", "Rose forgets the money.", "Rose pays the money back.", "d"),
]
OUTPUTS = {  # the stub re-aligner writes these: one perfect, one unchanged, one copying the context, one partial
    "Tom hits his brother.": "Tom talks to his brother.",
    "He is rude to his friend.": "He is rude to his friend.",
    "Tom kicks the door.": "Tom is angry at his brother.",
    "Rose forgets the money.": "Rose pays the money.",
}


class StubRealigner:
    """Returns hand-written outputs with the chains ``infer_text_edits`` gives; timings fixed."""

    def __init__(self, invalid: Sequence[str] = ()) -> None:
        self.invalid = set(invalid)
        self.calls: list[dict[str, Any]] = []

    def default_mode(self) -> str:
        return "apply"

    def realign_many(self, items: list[tuple[str, str]], batch_size: int = 8, *, mode: str | None = None, progress: bool = False, **kw: Any) -> list[RealignResult]:
        self.calls.append({"batch_size": batch_size, "mode": mode, **kw})
        out = []
        for k, (ctx, src) in enumerate(items):
            text = OUTPUTS[src]
            chain = infer_text_edits(src, text)  # in direct mode too: Realigner infers it there
            r = RealignResult(ctx, src, mode or "apply", chain, render_compact(chain), render_readable(chain, src), text)
            if src in self.invalid:
                r.valid, r.error, r.chain, r.text, r.compact = False, "edit 1 does not apply", [], src, "<|rep|>9"
            r.timings = {"total_s": [0.1, 0.2, 0.3, 0.4][k % 4], "batch_size": 2, "new_tokens": 10}
            out.append(r)
        return out


def kind_reward(contexts: list[str], texts: list[str]) -> list[float]:
    """A plain callable: 0.9 for texts with a kind verb, 0.1 otherwise."""
    return [0.9 if re.search(r"talks|kind|pays|breath", t) else 0.1 for t in texts]


def test_evaluate_aggregates_hand_written_outputs(tiny_tok: Any, tiny_lm: Any) -> None:
    stub = StubRealigner(invalid=["Rose forgets the money."])
    ev = E.evaluate(stub, EXAMPLES, reward=kind_reward, fluency=E.Fluency(tiny_lm, tiny_tok, "tiny LM"), resamples=50, batch_size=2, max_new_tokens=7)
    m = ev.metrics
    assert stub.calls == [{"batch_size": 2, "mode": "apply", "max_new_tokens": 7}]
    # Outputs: perfect (0.9), unchanged (0.1), context copy (0.1), invalid -> source (0.1).
    assert m["alignment"]["outputs"]["mean"] == pytest.approx(0.3)
    assert m["alignment"]["sources"]["mean"] == pytest.approx(0.1) and m["alignment"]["targets"]["mean"] == pytest.approx(0.9)
    assert m["alignment"]["outputs_above_source"]["mean"] == pytest.approx(0.25)
    b = m["behaviour"]
    assert b["valid"]["mean"] == pytest.approx(0.75)
    assert b["outputs"]["identical"] == pytest.approx(0.5)  # the unchanged one and the invalid one
    assert b["outputs"]["copies_context"] == pytest.approx(0.25)
    assert b["targets"]["identical"] == 0.0
    # Valid chains: 2 edits (replace hits->talks, insert to), 0 edits, and the context copy.
    assert b["chains"]["chains"] == 3 and b["chains"]["empty"] == pytest.approx(1 / 3)
    assert sum(b["chains"]["operations"].values()) == pytest.approx(1.0)
    assert b["gold_chains"]["chains"] == 4
    assert E.is_missing(b["generated_target_differs"])
    f = m["faithfulness"]["outputs"]
    row_rouge = [r["rouge_l"] for r in ev.rows]
    assert row_rouge[0] == pytest.approx(100.0) and f["rouge_l"]["mean"] == pytest.approx(sum(row_rouge) / 4)
    assert f["bleu"]["corpus"] == pytest.approx(E.corpus_bleu([r["output"] for r in ev.rows], [e.target for e in EXAMPLES]))
    expected_sari = corpus_sari([e.source for e in EXAMPLES], [r["output"] for r in ev.rows], [[e.target] for e in EXAMPLES])
    assert f["sari"]["mean"] == pytest.approx(100 * expected_sari.sari) and f["sari_keep"] == pytest.approx(100 * expected_sari.keep)
    base = m["faithfulness"]["sources_unchanged"]
    assert base["sari_add"] == 0.0 and base["sari_delete"] == 0.0 and base["rouge_l"]["ci95"] is None
    assert m["speed"]["latency_s"]["p50"] == pytest.approx(0.25) and m["speed"]["batch_size"] == 2
    fl = m["fluency"]
    assert fl["base_lm"] == "tiny LM" and fl["outputs"]["corpus"] > 1 and len(fl["outputs"]["ci95"]) == 2
    assert ev.rows[1]["ppl_output"] == pytest.approx(ev.rows[1]["ppl_source"])  # unchanged text, same perplexity
    h = m["headline"]
    assert set(h) == set(E.HEADLINE) and h["alignment"]["value"] == pytest.approx(0.3) and h["valid"]["value"] == 0.75
    lo, hi = h["alignment"]["ci95"]
    assert 0.1 <= lo <= 0.3 <= hi <= 0.9


def test_missing_fields_say_why() -> None:
    ev = E.evaluate(StubRealigner(), EXAMPLES, mode="direct", resamples=10)
    m = ev.metrics
    assert m["alignment"] == E.missing("no reward model given (--reward RUN)")
    assert m["fluency"] == E.missing("no base LM to score fluency with")
    for key in ("valid", "chains", "truncated"):
        assert "direct mode writes text, not a chain of edits" in m["behaviour"][key]["missing"]
    assert all(r["valid"] is None for r in ev.rows)
    assert E.is_missing(m["headline"]["alignment"]) and E.is_missing(m["headline"]["valid"])
    md = E.render_markdown(ev)
    assert "n/a (no reward model given" in md and "n/a (direct mode writes text" in md
    with pytest.raises(ValueError, match="no examples"):
        E.evaluate(StubRealigner(), [])


def test_markdown_diff_escapes_and_marks_edits() -> None:
    src = "He hits the <dog> | now."
    diff = E.markdown_diff(src, infer_text_edits(src, "He pets the <dog> | now."))
    assert diff == "He<del> hits</del><ins> pets</ins> the &lt;dog&gt; &#124; now."


def test_write_report_is_atomic_and_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ev = E.evaluate(StubRealigner(), EXAMPLES, reward=kind_reward, resamples=10)
    out = E.write_report(ev, tmp_path / "report", shown=2)
    assert sorted(p.name for p in out.iterdir()) == ["alignment.png", "chain_lengths.png", "metrics.json", "outputs.jsonl", "report.md"]
    assert (out / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="--overwrite"):
        E.write_report(ev, out)

    def boom(*a: Any, **k: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr("secondthoughts.report.render_markdown", boom)
    with pytest.raises(RuntimeError):
        E.write_report(ev, out, overwrite=True)
    assert (out / "report.md").is_file()  # the old report survives a failed rewrite
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # and no temporary folder is left


# ---------------------------------------------------------------- a tiny trained run, end to end


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    from secondthoughts.sft import TrainConfig, train

    cfg = TrainConfig(data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path_factory.mktemp("runs") / "coe"), mode="coe",
                      max_length=128, batch_size=4, max_steps=2, eval_fraction=0.0, lora_r=4, lr=0.05, progress=False)  # fmt: skip
    return train(cfg).out


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained reward model on a 2-layer BERT whose vocabulary holds the fixture's words."""
    from secondthoughts.reward import RewardConfig, RewardModel

    path = tiny.save_tiny_bert(tmp_path_factory.mktemp("bert"))
    rm = RewardModel.create(RewardConfig(backbone=str(path), max_length=64))
    return rm.save(tmp_path_factory.mktemp("reward") / "run")


def test_base_lm_of_a_lora_run_is_the_adapter_disabled(lora_run: Path, tiny_model_dir: Path) -> None:
    model, tok = models.load(str(lora_run), device="cpu")
    fl = E.base_fluency(lora_run, model, tok)
    assert isinstance(fl, E.Fluency) and fl.adapter_off and "adapter disabled" in fl.description
    base, base_tok = models.load(str(tiny_model_dir), device="cpu")
    texts = ["Tom talks to his brother.", "Rose pays her friend back."]
    with E.merged(model):  # generation state; fluency must still see the base weights afterwards
        adapted = E.Fluency(model, tok, "adapted").nll(texts)
    ours, theirs = fl.nll(texts), E.Fluency(base, base_tok, "base").nll(texts)
    assert [n for _, n in ours] == [n for _, n in theirs]
    assert _close([s for s, _ in ours], [s for s, _ in theirs], tol=1e-3)
    assert not _close([s for s, _ in adapted], [s for s, _ in theirs], tol=1e-3)  # the adapter does change them
    # A full fine-tune (no adapter) is scored by the model named in its config; a bare folder names none.
    plain, plain_tok = models.load(str(tiny_model_dir), device="cpu")
    assert "records no base model" in E.base_fluency(tiny_model_dir, plain, plain_tok)
    given = E.base_fluency(tiny_model_dir, plain, plain_tok, base_lm=str(tiny_model_dir))
    assert isinstance(given, E.Fluency) and "--base-lm" in given.description
    full_run = tiny_model_dir.parent / "full-run"
    full_run.mkdir(exist_ok=True)
    (full_run / "config.json").write_text(json.dumps({"train": {"model": str(tiny_model_dir), "mode": "coe"}}))
    from_config = E.base_fluency(full_run, plain, plain_tok)
    assert isinstance(from_config, E.Fluency) and not from_config.adapter_off and "loaded from its config.json" in from_config.description
    assert _close([s for s, _ in from_config.nll(texts)], [s for s, _ in theirs], tol=1e-5)
    (full_run / "config.json").write_text(json.dumps({"train": {"model": str(full_run / "gone"), "mode": "coe"}}))
    assert "could not be loaded" in E.base_fluency(full_run, plain, plain_tok)


def test_cli_end_to_end(lora_run: Path, reward_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "test.jsonl"
    write_examples(data, tiny.EXAMPLES)
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(lora_run), "--data", str(data), "--reward", str(reward_run), "--limit", "5",
            "--second-reward", str(reward_run), "--coherence", str(reward_run),
            "--batch-size", "2", "--bootstrap", "100", "--examples", "3", "--out", str(out), "--device", "cpu",
            "--best-of", "1"]  # the report, not the default best-of (its own test below)  # fmt: skip
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "evaluated 5 examples" in stdout and "report.md" in stdout
    assert re.search(r"SARI +\d+\.\d+ \[\d", stdout) and "n/a" not in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["examples"] == 5 and m["info"]["mode"] == "apply" and m["info"]["limit"] == 5
    for key in E.HEADLINE:
        assert isinstance(m["headline"][key]["value"], float), key
    assert len(m["headline"]["sari"]["ci95"]) == 2
    assert m["behaviour"]["valid"]["mean"] == 1.0  # constrained decoding: every chain applies
    assert "adapter disabled" in m["fluency"]["base_lm"]
    assert m["plots"] == {"alignment": "alignment.png", "chain_lengths": "chain_lengths.png"}
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in tiny.EXAMPLES[:5]]
    assert {"output", "chain", "reward_output", "ppl_output", "rouge_l", "bleu", "sari", "kept", "latency_s"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "| alignment: mean P(aligned) |" in md and "![Alignment before / after](alignment.png)" in md
    assert len(re.findall(r"\n\| ex\d ", md)) == 3  # three example rows

    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err
    no_reward = [*args[:5], *args[7:9], *args[13:], "--overwrite", "--mode", "generate"]  # without the three scorers
    assert "--reward" not in no_reward and str(reward_run) not in no_reward
    assert main(no_reward + ["--score-generated"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["outputs"] == "generated target"
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert all(r["output"] == (r["generated_target"] if r["generated_target"] is not None else r["output"]) for r in rows)
    assert main(no_reward) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["outputs"] == "chain applied"
    assert m["alignment"] == {"missing": "no reward model given (--reward RUN)"}
    assert m["plots"]["alignment"] == m["alignment"] and not (out / "alignment.png").exists()
    assert m["info"]["mode"] == "generate" and "Alignment before / after: not drawn (no reward model" in (out / "report.md").read_text()

    # unconstrained: the tiny model's chains are its own, and the report says how they were decoded
    assert main([*no_reward, "--unconstrained", "--max-new-tokens", "6"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["constrained"] is False and m["info"]["generation"]["constrained"] is False
    assert 0.0 <= m["behaviour"]["valid"]["mean"] <= 1.0


def test_cli_errors_name_file_and_line(lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "a"}\n')
    assert main(["evaluate", "--model", str(lora_run), "--data", str(bad), "--out", str(tmp_path / "r")]) == 1
    assert f"{bad}:2: field 'target'" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"source": "a", "target": "b"}\n')
    assert main(["evaluate", "--model", str(lora_run), "--data", str(good), "--out", str(tmp_path / "r"), "--limit", "0"]) == 2
    assert not (tmp_path / "r").exists()


def test_coherence_and_second_scorer_columns(tiny_tok: Any, tiny_lm: Any) -> None:
    def coherent(contexts: list[str], texts: list[str]) -> list[float]:
        return [0.2 if t == "Rose forgets the money." else 0.8 for t in texts]

    ev = E.evaluate(StubRealigner(invalid=["Rose forgets the money."]), EXAMPLES, reward=kind_reward, second_reward=kind_reward,
                    coherence=coherent, resamples=50)
    co = ev.metrics["coherence"]
    outs = [r["coherence_output"] for r in ev.rows]
    golds = [r["coherence_target"] for r in ev.rows]
    assert co["outputs"]["mean"] == pytest.approx(sum(outs) / 4) and co["targets"]["mean"] == pytest.approx(sum(golds) / 4)
    assert co["outputs_vs_targets"]["value"] == pytest.approx(sum(outs) / sum(golds))
    lo, hi = co["outputs_vs_targets"]["ci95"]
    assert lo <= co["outputs_vs_targets"]["value"] <= hi
    assert co["outputs_at_least_half"]["mean"] == pytest.approx(sum(o >= 0.5 for o in outs) / 4)
    assert ev.metrics["alignment_second"]["outputs"]["mean"] == pytest.approx(ev.metrics["alignment"]["outputs"]["mean"])
    h = ev.metrics["headline"]
    assert h["coherence"]["value"] == pytest.approx(co["outputs"]["mean"]) and h["coherence_vs_gold"]["value"] == co["outputs_vs_targets"]["value"]
    assert "coherence: mean P(coherent)" in E.render_markdown(ev)


def test_cli_best_of_reranks_samples(lora_run: Path, reward_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "test.jsonl"
    write_examples(data, tiny.EXAMPLES)
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(lora_run), "--data", str(data), "--limit", "2", "--best-of", "3", "--rerank", str(reward_run),
            "--coherence", str(reward_run), "--heads", "none", "--bootstrap", "0", "--max-new-tokens", "16", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["generation"]["best_of"] == 3 and m["info"]["rerank"] == [str(reward_run)]
    assert main([*args[:-4], "--best-of", "0", "--out", str(tmp_path / "r2")]) == 1
    assert "--best-of must be >= 1" in capsys.readouterr().err
    assert main([*args[:-4], "--rerank", str(tmp_path / "nope"), "--out", str(tmp_path / "r3")]) == 1
    assert "neither a reward run folder nor module:function" in capsys.readouterr().err
    assert main([*args[:-4], "--heads", str(tmp_path), "--out", str(tmp_path / "r4")]) == 1
    assert "--heads " in (err := capsys.readouterr().err) and "no heads.json" in err and not (tmp_path / "r4").exists()

