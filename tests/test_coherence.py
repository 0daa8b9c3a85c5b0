"""Coherence: synthetic failures made from real chains, the training items, the LM measures on a
tiny LM, AUC against hand-computed values, the reranker's combination, best-of-N decoding and a
coherence scorer trained through the reward machinery."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import tiny

from secondthoughts import coherence as C
from secondthoughts.best_of import choose_best
from secondthoughts.data import DataError
from secondthoughts.edits import apply_text_edits, infer_text_edits
from secondthoughts.evaluate import Fluency
from secondthoughts.realign import RealignResult

SRC = "Rose hopes that her friend forgets about the money she owes."
TGT = "Rose offers to pay her friend back for the movie ticket."


def test_spliced_is_a_proper_partial_application_of_the_chain() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(40):
        text = C.spliced(SRC, TGT, rng)
        assert text is not None and text not in (SRC, TGT)
        seen.add(text)
    # every splice is the source with some (not all, not none) edits of one cost set's chain applied
    for text in seen:
        ok = False
        for costs in ((1, 1, 2), (1, 1, 3), (1, 1, 1)):
            ch = infer_text_edits(SRC, TGT, costs)
            for mask in range(1, 2 ** len(ch) - 1):
                if apply_text_edits(SRC, [e for i, e in enumerate(ch) if mask >> i & 1]) == text:
                    ok = True
                    break
            if ok:
                break
        assert ok, text
    assert len(seen) > 5
    assert C.spliced("Tom hits his brother.", "Tom hits his brother hard.", rng) is None  # one edit: no proper subset


def test_truncated_stubs_end_where_no_sentence_can() -> None:
    rng = random.Random(1)
    for _ in range(30):
        stub = C.truncated(TGT, rng)
        assert stub is not None and stub.endswith(".") and TGT.startswith(stub[:-1])
        words = re.findall(r"\w+", stub)
        assert len(words) == 2 or words[-1].lower() in C._OPEN_ENDED
    assert C.truncated("Tom hits him.", rng) is None


def test_duplicated_inserts_a_span_of_the_other_text() -> None:
    rng = random.Random(2)
    for _ in range(30):
        out = C.duplicated(TGT, SRC, rng)
        assert out is not None and out != TGT
        chain = infer_text_edits(TGT, out, (1, 1, 3))  # the text plus one inserted span of the other
        assert len(chain) == 1 and chain[0].op == "insert" and 1 <= len(chain[0].new) <= 4
        assert "".join(chain[0].new).split() == "".join(chain[0].new).split() and "  " not in out


def test_coherence_items_label_complete_and_broken_texts() -> None:
    items = C.coherence_items(tiny.EXAMPLES * 3, random.Random(0))
    kinds = {it.kind for it in items}
    assert {"target", "source", "splice"} <= kinds and kinds <= {"target", "source", "splice", "truncation", "duplicate"}
    for it in items:
        ex = (tiny.EXAMPLES * 3)[it.example]
        assert it.context == ex.context
        assert (it.label == C.COHERENT) == (it.kind in C.COMPLETE_KINDS)
        if it.label == C.BROKEN:
            assert it.text not in (ex.source, ex.target)
    assert C.coherence_items(tiny.EXAMPLES, random.Random(5)) == C.coherence_items(tiny.EXAMPLES, random.Random(5))


def test_auc_hand_computed_and_interval() -> None:
    assert C.auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert C.auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # positives {3, 1}, negatives {2, 1}: pairs 3>2, 3>1, 1<2, 1=1 (half) -> 2.5 / 4
    assert C.auc([3, 1, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert math.isnan(C.auc([1, 2], [1, 1]))
    a, lo, hi = C.auc_ci([0.9, 0.7, 0.6, 0.4, 0.3, 0.8, 0.2, 0.1], [1, 1, 0, 1, 0, 1, 0, 0], resamples=200)
    assert lo <= a <= hi and 0 <= lo and hi <= 1


def test_combined_scores_and_reranker() -> None:
    assert C.combined_scores([0.5], [0.25], 2.0) == [pytest.approx(math.log(0.5) + 2 * math.log(0.25))]
    with pytest.raises(ValueError, match="coherence_weight"):
        C.combined_scores([0.5], [0.5], -1)
    with pytest.raises(ValueError, match="2 alignment scores but 1"):
        C.combined_scores([0.5, 0.5], [0.5])
    align = lambda c, t: [0.9 if "pay" in x else 0.2 for x in t]  # noqa: E731
    coh = lambda c, t: [0.1 if x.endswith("and.") else 0.9 for x in t]  # noqa: E731
    r = C.Reranker([align], [coh])
    s = r(["c"] * 3, ["Rose will pay and.", "Rose will pay her back.", "Rose forgets."])
    assert s.index(max(s)) == 1  # aligned and coherent beats aligned but broken
    only = C.Reranker([align])
    assert only(["c"], ["pay"]) == [pytest.approx(math.log(0.9))]
    with pytest.raises(ValueError, match="at least one scorer"):
        C.Reranker([], [])


def test_the_source_and_length_penalties() -> None:
    src = "Rose keeps the money she owes."
    assert C.source_similarity(src.upper(), src) == 1.0 and C.source_similarity("xyz", "abc") == 0.0
    texts = ["Rose keeps the money she owes.", "Rose pays her friend back.", "Rose pays her friend back the money today, as promised."]
    flat = lambda c, t: [0.5] * len(t)  # noqa: E731
    plain = C.Reranker([flat])
    assert not plain.takes_sources and len(set(plain(["c"] * 3, texts))) == 1
    r = C.Reranker([flat], source_penalty=2.0, length_penalty=0.5)
    assert r.takes_sources
    want = [math.log(0.5) - 2.0 * C.source_similarity(t, src) - 0.5 * math.log(len(t.split())) for t in texts]
    assert r(["c"] * 3, texts, [src] * 3) == pytest.approx(want)
    assert max(range(3), key=r(["c"] * 3, texts, [src] * 3).__getitem__) == 1  # not the source's act, not the long one
    with pytest.raises(ValueError, match="needs the sources"):
        r(["c"] * 3, texts)
    short = C.Reranker([flat], length_penalty=1.0)  # a length penalty alone needs no sources
    assert not short.takes_sources and short(["c"] * 2, ["a b", "a b c d"]) == pytest.approx([math.log(0.5) - math.log(2), math.log(0.5) - math.log(4)])


def _result(text: str, valid: bool = True, source: str = "src") -> RealignResult:
    return RealignResult("ctx", source, "apply", text=text, valid=valid)


def test_choose_best_prefers_valid_changed_texts_and_scores_each_text_once() -> None:
    calls: list[list[str]] = []

    def score(contexts: list[str], texts: list[str]) -> list[float]:
        calls.append(texts)
        return [{"src": 9.0, "a": 1.0, "b": 2.0, "bad": 5.0}[t] for t in texts]

    cands = [_result("a"), _result("src"), _result("b"), _result("bad", valid=False), _result("b")]
    best = choose_best(cands, score)
    assert best.text == "b" and best.candidates == 5 and best.rerank_score == 2.0 and best is cands[2]
    assert calls == [["a", "src", "b", "bad"]]
    only_source = choose_best([_result("src"), _result("src")], score)
    assert only_source.text == "src"


def test_best_of_samples_and_picks_the_reranked_text(untrained: Any) -> None:
    src, ctx = "Tom hits his brother when he is angry.", "It is wrong to hit people."
    chosen: list[list[str]] = []

    def longest(contexts: list[str], texts: list[str]) -> list[float]:
        chosen.append(texts)
        return [float(len(t)) for t in texts]

    res = untrained.realign(ctx, src, best_of=4, rerank=longest, temperature=2.0, seed=3, max_new_tokens=32)
    assert res.candidates == 5 and res.valid and len(chosen) == 1 and 1 <= len(chosen[0]) <= 5
    assert chosen[0][0] == untrained.realign(ctx, src, max_new_tokens=32).text  # the greedy chain is the first candidate
    changed = [t for t in chosen[0] if t != src]
    assert res.text == max(changed or chosen[0], key=len)
    # every distinct candidate, as scored, in decoding order; written out only when asked
    assert [(a["text"], a["score"]) for a in res.alternatives] == [(t, float(len(t))) for t in chosen[0]]
    assert all(a["valid"] for a in res.alternatives if a["text"] == res.text)
    assert "alternatives" not in res.to_dict() and res.to_dict(alternatives=True)["alternatives"] == res.alternatives
    assert res.score_penalties == {"source": 0.0, "length": 0.0} and "score_penalties" not in res.to_dict()  # a plain callable adds none
    many = untrained.realign_many([(ctx, src), ("", "Rose hopes her friend forgets.")], batch_size=8, best_of=3, rerank=longest, seed=1, max_new_tokens=24)
    assert [r.source for r in many] == [src, "Rose hopes her friend forgets."] and all(r.candidates == 4 for r in many)
    with pytest.raises(ValueError, match="needs a reranker"):
        untrained.realign(ctx, src, best_of=2)
    with pytest.raises(ValueError, match="best_of must be >= 1"):
        untrained.realign(ctx, src, best_of=0)
    for plain in ({"num_beams": 2}, {"prompt_lookup_num_tokens": 3}, {"draft": "chain"}):
        with pytest.raises(ValueError, match="best_of samples chains: no beams, prompt lookup or chain drafting"):
            untrained.realign(ctx, src, best_of=2, rerank=longest, **plain)


def test_lm_measures_on_a_tiny_lm(tiny_tok: Any, tiny_lm: Any) -> None:
    fl = Fluency(tiny_lm, tiny_tok, "tiny")
    texts = ["Tom talks to his brother.", "Tom his talks brother to."]
    rows = fl.token_logprobs(texts)
    nll = fl.nll(texts)
    for (ids, lp, starts), (s, n), text in zip(rows, nll, texts):
        assert len(ids) == len(lp) == len(starts) == n and s == pytest.approx(-lp.sum())
        assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:])) and starts[-1] < len(text)
    counts = C.unigram_counts(tiny_tok, tiny.CORPUS)
    lm = C.LMScorer(fl, counts)
    m = lm.measures(texts, joins=[[4, 9], []])
    assert set(m) == {"mean_logp", "min_logp", "slor", "join_logp"}
    for k in range(2):
        ids, lp, _ = rows[k]
        assert m["mean_logp"][k] == pytest.approx(lp.mean()) and m["min_logp"][k] == pytest.approx(lp.min())
        assert m["slor"][k] == pytest.approx((lp - lm.unigram_logp(ids)).mean())
    assert m["join_logp"][1] == m["min_logp"][1]  # no joins: the text's own minimum
    assert m["join_logp"][0] >= m["min_logp"][0]


def test_chain_joins_are_where_written_text_meets_kept_text() -> None:
    src = "Tom hits his brother."
    chain = infer_text_edits(src, "Tom gently hugs his brother.")
    text = apply_text_edits(src, chain)
    joins = C.chain_joins(src, chain)
    assert text == "Tom gently hugs his brother." and joins == [3, 10, 15]  # the two edits meet at 10


def test_read_labelled_names_file_line_and_field(tmp_path: Path) -> None:
    p = tmp_path / "labels.jsonl"
    p.write_text('{"context": "c", "text": "t", "label": 1}\n{"text": "u", "label": 0}\n')
    assert C.read_labelled(p) == [C.Labelled("c", "t", 1), C.Labelled("", "u", 0)]
    p.write_text('{"context": "c", "text": "t", "label": 1}\n{"context": "c", "text": "t", "label": 2}\n')
    with pytest.raises(DataError, match=r"labels.jsonl:2: field 'label'"):
        C.read_labelled(p)
    p.write_text('{"context": "c", "text": "", "label": true}\n')
    with pytest.raises(DataError, match=r":1: field 'text'"):
        C.read_labelled(p)


@pytest.fixture(scope="module")
def bert_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_a_coherence_scorer_trains_through_the_reward_machinery(bert_backbone: Path, tmp_path: Path) -> None:
    from secondthoughts import reward as R
    from secondthoughts import reward_eval, reward_train

    labelled = tmp_path / "labels.jsonl"
    labelled.write_text("".join(json.dumps({"context": e.context, "text": e.target, "label": 1}) + "\n" for e in tiny.EXAMPLES[:3]))
    cfg = R.RewardConfig(backbone=str(bert_backbone), max_length=64, objective="coherence", labelled=str(labelled), epochs=2, views="context")
    model, stats = reward_train.train(cfg, tiny.EXAMPLES * 2, progress=False)
    assert stats["targets"] == 2 * len(tiny.EXAMPLES) * 2 and stats["labelleds"] == 3 * cfg.labelled_repeats * 2
    assert stats["steps"] == 2 * math.ceil((2 * len(tiny.EXAMPLES) + 3) / cfg.batch_size)  # each labelled text its own group
    assert stats.get("splices", 0) > 0
    assert model.encoder.config.id2label == {0: "broken", 1: "coherent"}
    path = model.save(tmp_path / "coh", {"dev": {}})
    loaded = R.load(path)
    assert R.objective_of(loaded) == "coherence"
    m = reward_eval.evaluate_model(loaded, tiny.EXAMPLES)
    assert {"auc", "pairwise_accuracy", "accuracy_target", "accuracy_splice"} <= set(m) and 0 <= m["auc"] <= 1
    rr = C.load_reranker([str(path)], 2.0)
    assert rr.coherence and not rr.alignment and rr.coherence_weight == 2.0
    with pytest.raises(ValueError, match="labelled texts train a coherence scorer"):
        R.RewardConfig(labelled=str(labelled))


def test_check_reranker_fails_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs --rerank"):
        C.check_reranker([])
    with pytest.raises(ValueError, match="neither a reward run folder nor module:function"):
        C.check_reranker([str(tmp_path / "nothing")])
    with pytest.raises(FileNotFoundError, match="not a reward model run folder"):
        C.check_reranker([str(tmp_path)])
    with pytest.raises(ValueError, match="coherence-weight"):
        C.check_reranker(["m:f"], -1)
    with pytest.raises(ValueError, match="--source-penalty must be >= 0, got -0.5"):
        C.check_reranker(["m:f"], source_penalty=-0.5)
    with pytest.raises(ValueError, match="--length-penalty must be >= 0"):
        C.check_reranker(["m:f"], length_penalty=-1)
    C.check_reranker(["coherence=pkg.mod:fn", "pkg.mod:other"])
