from __future__ import annotations

import pytest
import torch

from secondthoughts import decoding
from secondthoughts.constrained import ChainConstraint
from secondthoughts.repeats import RepeatGuard, banned_next, written_spans

NEW, OLD, REP, EOC = 100, 101, 102, 103


def test_spans_are_the_runs_after_new_markers():
    gen = [REP, OLD, 5, 6, NEW, 7, 8, 9, EOC]
    assert written_spans(gen, NEW, (OLD, REP, EOC)) == ([[7, 8, 9]], False)
    assert written_spans(gen[:-1], NEW, (OLD, REP, EOC)) == ([[7, 8, 9]], True)
    assert written_spans([REP, OLD, 5, NEW, 1, 2, REP, OLD, 6, NEW, 3], NEW, (OLD, REP)) == ([[1, 2], [3]], True)


def test_banned_tokens_complete_an_ngram_already_written():
    assert banned_next([[1, 2, 3, 1, 2]], 3) == {3}
    assert banned_next([[1, 2, 3, 1]], 2) == {2}
    assert banned_next([[1, 2, 3, 1]], 3) == set()  # (3, 1) was never followed
    # across the spans of earlier edits, never across a span's edge
    assert banned_next([[4, 5, 6], [4, 5]], 3) == {6}
    assert banned_next([[4, 5], [6, 4]], 3) == set()
    assert banned_next([[]], 2) == set()


def test_guard_masks_only_open_rows_and_never_the_last_allowed_token():
    guard = RepeatGuard(NEW, (OLD, REP, EOC), prompt_len=2, n=2)
    ids = torch.tensor([[9, 9, REP, OLD, 5, NEW, 1, 2, 1], [9, 9, REP, OLD, 5, NEW, 1, 2, EOC]])
    scores = torch.zeros(2, 110)
    out = guard(ids, scores)
    assert out[0, 2] == -float("inf") and torch.isfinite(out[0]).sum() == 109
    assert torch.isfinite(out[1]).all()  # the span is closed: nothing to guard
    assert torch.isfinite(scores).all()  # the caller's scores are not written to
    only = torch.full((1, 110), -float("inf"))
    only[0, 2] = 0.0  # the constraint left one token, a repeat: kept
    assert guard(ids[:1], only)[0, 2] == 0.0
    with pytest.raises(ValueError, match="n-gram size"):
        RepeatGuard(NEW, (), 0, n=1)


def _repeats(ids: list[int], voc, n: int) -> int:
    spans, _ = written_spans(ids, voc.new, [m for m in voc.specials if m != voc.new])
    grams = [tuple(s[i : i + n]) for s in spans for i in range(len(s) - n + 1)]
    return len(grams) - len(set(grams))


def test_guarded_generation_writes_valid_chains_without_repeats(untrained):
    """The untrained model writes noise that repeats itself; guarded, the same greedy search
    writes chains that still parse and apply, with no token bigram written twice."""
    r = untrained
    tok, voc = r.tokenizer, r.vocab
    sources = ["Tom keeps the ladder and hides it.", "She yells at the kids in the park.", "He takes the last cookie."]
    prompts = [decoding.prompt_ids(tok, "Be kind.", s) for s in sources]
    ids, mask = decoding.left_padded(prompts, tok.pad_token_id)
    width, budget = ids.shape[1], decoding.new_token_budget(tok, sources)
    stops = decoding.stop_ids(tok, voc.eoc)

    def run(guarded: bool) -> list[list[int]]:
        procs = [ChainConstraint(voc, sources, width)]
        if guarded:
            procs.append(RepeatGuard(voc.new, [m for m in voc.specials if m != voc.new], width, 2))
        return decoding.generate(r.model.eval(), ids, mask, budget, stops, tok.pad_token_id, procs, num_beams=1, do_sample=False)

    plain, guarded = run(False), run(True)
    assert sum(_repeats(g, voc, 2) for g in plain) > 0  # else this test shows nothing
    assert all(_repeats(g, voc, 2) == 0 for g in guarded)
    results = r.realign_many([("Be kind.", s) for s in sources], batch_size=3, no_repeat=2)
    assert all(x.valid for x in results)


def test_chain_drafting_decodes_as_plain_greedy_under_the_guard(untrained):
    items = [("Be kind.", "Tom keeps the ladder and hides it."), ("Be fair.", "He takes the last cookie.")]
    drafted = untrained.realign_many(items, batch_size=1, draft="chain", no_repeat=2)
    plain = untrained.realign_many(items, batch_size=1, draft="none", no_repeat=2)
    assert [x.compact for x in drafted] == [x.compact for x in plain]


def test_bad_no_repeat_is_an_error(untrained):
    for bad, kw in ((1, {}), (-2, {})):
        with pytest.raises(ValueError, match="no_repeat"):
            untrained.realign("Be kind.", "He takes the last cookie.", no_repeat=bad, **kw)
