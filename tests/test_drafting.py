"""Drafting gives plain greedy's ids: chain-aware drafts on tiny models, with and without the
chain constraint, after a forced prefix, at the end of the budget; drafts that are accepted
whole, in part or not at all leave the KV cache right."""

from __future__ import annotations

import random

import pytest
import tiny
import torch

from secondthoughts.constrained import ChainConstraint, start_state
from secondthoughts.drafting import (
    ChainDrafter,
    PromptLookup,
    greedy_generate,
    ngram_lookup,
)
from secondthoughts.realign import Realigner, _Job

SRC = "Tom hits his brother when he is angry."
CTX = "It is wrong to hit people."
ITEMS = [(e.context, e.source) for e in tiny.EXAMPLES]


def _setup(
    rl: Realigner, source: str, mode: str = "apply", prefix: str = "", fmt: str = "anchored"
) -> tuple[list[int], list[int], ChainConstraint, _Job]:
    job = _Job(CTX, source, (), False)
    if prefix:
        from secondthoughts.readable import as_chain

        edits, closed = as_chain(prefix, source)
        job = _Job(CTX, source, tuple(edits), closed)
    prompt = rl._prompt(job)
    stops = [rl.tokenizer.eos_token_id] + ([rl.vocab.eoc] if mode == "apply" else [])
    start = start_state(job.prefix[-1].end, job.closed, job.prefix[-1].op) if job.prefix else start_state()
    proc = ChainConstraint(rl.vocab, [source], len(prompt), starts=[start], then="stop" if mode == "apply" else "target", chain_format=fmt)
    return prompt, stops, proc, job


def _hf_greedy(rl: Realigner, prompt: list[int], budget: int, stops: list[int], proc: ChainConstraint | None) -> list[int]:
    with torch.inference_mode():
        out = rl.model.generate(
            input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=budget, eos_token_id=stops, pad_token_id=rl.tokenizer.pad_token_id, do_sample=False,
            logits_processor=[proc] if proc else None,
        )  # fmt: skip
    gen = out[0, len(prompt) :].tolist()
    return gen[: next((i + 1 for i, t in enumerate(gen) if t in stops), len(gen))]


def test_ngram_lookup_copies_after_the_latest_match():
    assert ngram_lookup([5, 6, 7, 8, 1, 5, 6, 9, 2, 5, 6], 2) == [9, 2]  # the bigram's latest earlier match
    assert ngram_lookup([1, 2, 3, 4, 3], 5) == [4, 3]  # a unigram when no bigram matches
    assert ngram_lookup([1, 2, 3], 4) == []
    assert ngram_lookup([1, 2, 3, 4, 3], 5, max_ngram=3, min_ngram=2) == []  # no bigram match


def test_chain_drafter_drafts_anchored_spans(untrained):
    rl = untrained
    voc, tok = rl.vocab, rl.tokenizer
    drafter = ChainDrafter(voc, tok, SRC)
    span = tok(" hits his brother when he is angry.", add_special_tokens=False)["input_ids"]
    # a chain starts with a guessed replace of the span after the name (no position to count)
    assert drafter([], [], 64) == [voc.rep, voc.old] + span
    assert drafter([], [voc.dele], 64) == [voc.old] + span
    # inside an anchored span: the rest of the first place it matches
    his = tok(" his", add_special_tokens=False)["input_ids"]
    assert drafter([], [voc.dele, voc.old, *his], 64) == tok(" brother when he is angry.", add_special_tokens=False)["input_ids"]
    # an insert's anchor is one source token: the name, for a first edit after it
    assert drafter([], [voc.ins, voc.old], 64) == tok("Tom", add_special_tokens=False)["input_ids"]


def test_chain_drafter_drafts_position_marker_and_span(untrained):
    rl = untrained
    voc, tok = rl.vocab, rl.tokenizer
    drafter = ChainDrafter(voc, tok, SRC, chain_format="positional")
    one = tok("1", add_special_tokens=False)["input_ids"]
    span = tok(" hits his brother when he is angry.", add_special_tokens=False)["input_ids"]
    # a chain starts with a guessed replace after the name, with its span
    assert drafter([], [], 64) == [voc.rep] + one + [voc.old] + span
    # after <|rep|> the first edit's likeliest position is 1 (after the name), then the span from it
    assert drafter([], [voc.rep], 64) == one + [voc.old] + span
    assert drafter([], [voc.rep], 3) == (one + [voc.old] + span)[:3]
    # inside the span: the rest of it, resumed after the tokens already written
    assert drafter([], [voc.dele, *one, voc.old, span[0]], 64) == span[1:]
    # free text: nothing, unless a lookup drafter is given
    text = [voc.rep, *one, voc.old, span[0], voc.new, *tok(" talks", add_special_tokens=False)["input_ids"]]
    assert ChainDrafter(voc, tok, SRC, chain_format="positional")([], text, 8) == []
    assert ChainDrafter(voc, tok, SRC, text_lookup=PromptLookup(2), chain_format="positional")([7, 8, 9, 7], text, 8) == [8, 9]


@pytest.mark.parametrize("mode", ["apply", "generate"])
@pytest.mark.parametrize("constrained, fmt", [(True, "anchored"), (True, "positional"), (True, "inline"), (False, "anchored"), (False, "inline")])
def test_chain_drafting_gives_plain_greedy_ids(untrained, mode, constrained, fmt):
    rl = untrained
    for _, source in ITEMS + [(CTX, SRC)]:
        prompt, stops, proc, job = _setup(rl, source, mode, fmt=fmt)
        proc = proc if constrained else None
        budget = rl._budget([job], mode)
        ref = _hf_greedy(rl, prompt, budget, stops, proc)
        plain, _ = greedy_generate(rl.model, prompt, budget, stops=stops, processors=[proc] if proc else [])
        drafter = ChainDrafter(rl.vocab, rl.tokenizer, source, target_lookup=PromptLookup(6), text_lookup=PromptLookup(3), chain_format=fmt)
        drafted, stats = greedy_generate(rl.model, prompt, budget, stops=stops, processors=[proc] if proc else [], drafter=drafter)
        assert plain == ref
        assert drafted == ref
        assert stats.forwards <= len(ref)


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 13])
def test_drafting_stops_at_the_budget_like_plain_greedy(untrained, budget):
    rl = untrained
    prompt, stops, proc, _ = _setup(rl, SRC, "generate")
    ref = _hf_greedy(rl, prompt, budget, stops, proc)
    drafter = ChainDrafter(rl.vocab, rl.tokenizer, SRC, target_lookup=PromptLookup(6))
    drafted, _ = greedy_generate(rl.model, prompt, budget, stops=stops, processors=[proc], drafter=drafter, max_draft=12)
    assert drafted == ref and len(drafted) <= budget


def test_drafting_after_a_prefix(untrained):
    rl = untrained
    prefix = "<|rep|>1<|old|> hits<|new|> talks to"
    prompt, stops, proc, job = _setup(rl, SRC, "apply", prefix)
    budget = 40
    start = start_state(job.prefix[-1].end, job.closed, job.prefix[-1].op)
    drafter = ChainDrafter(rl.vocab, rl.tokenizer, SRC, start)
    drafted, _ = greedy_generate(rl.model, prompt, budget, stops=stops, processors=[proc], drafter=drafter)
    assert drafted == _hf_greedy(rl, prompt, budget, stops, proc)
    r_chain = rl.realign(CTX, SRC, prefix=prefix, draft="chain", max_new_tokens=budget)
    r_plain = rl.realign(CTX, SRC, prefix=prefix, draft="none", max_new_tokens=budget)
    assert r_chain.compact == r_plain.compact and r_chain.prefix_edits == 1


def test_accepted_partial_and_rejected_drafts_keep_the_cache_right(untrained):
    """An oracle drafter that proposes the true continuation with one token spoilt at a random
    place (or none): every acceptance length occurs, and the ids stay greedy's."""
    rl = untrained
    prompt, stops, proc, job = _setup(rl, SRC, "generate")
    budget = rl._budget([job], "generate")
    ref = _hf_greedy(rl, prompt, budget, stops, proc)
    rng = random.Random(0)

    def oracle(seq, gen, k):
        d = ref[len(gen) : len(gen) + k]
        if d and rng.random() < 0.7:
            j = rng.randrange(len(d))
            d[j] = (d[j] + 1) % len(rl.tokenizer)
        return d

    drafted, stats = greedy_generate(rl.model, prompt, budget, stops=stops, processors=[proc], drafter=oracle, max_draft=6)
    assert drafted == ref
    assert 0 < stats.accepted < stats.drafted and stats.forwards < len(ref)


def test_realigner_draft_option(untrained):
    rl = untrained
    for mode in ("apply", "generate"):
        a = rl.realign(CTX, SRC, mode=mode, draft="chain")
        b = rl.realign(CTX, SRC, mode=mode, draft="none")
        assert (a.compact, a.generated_target, a.timings["new_tokens"]) == (b.compact, b.generated_target, b.timings["new_tokens"])
        assert "forwards" in a.timings and "forwards" not in b.timings
    assert "forwards" in rl.realign(CTX, SRC).timings  # auto: greedy apply one at a time drafts
    assert "forwards" not in rl.realign(CTX, SRC, mode="generate").timings
    batch = rl.realign_many(ITEMS, batch_size=3, max_new_tokens=30)  # auto: batches stay batched
    assert all("forwards" not in r.timings and r.timings["batch_size"] == 3 for r in batch)
    assert [r.compact for r in batch] == [rl.realign(c, s, max_new_tokens=30).compact for c, s in ITEMS]
    with pytest.raises(ValueError, match="greedy"):
        rl.realign(CTX, SRC, draft="chain", do_sample=True)
    with pytest.raises(ValueError, match="draft must be one of"):
        rl.realign(CTX, SRC, draft="fast")  # type: ignore[arg-type]
