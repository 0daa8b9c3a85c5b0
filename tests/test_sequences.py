"""Sequence format, loss masks, length policy, and packing that keeps examples apart."""

from __future__ import annotations

import pytest
import tiny
import torch
import torch.nn.functional as F

from secondthoughts import models
from secondthoughts.chain_text import parse_compact, render_compact, render_inline
from secondthoughts.completion_loss import CompletionLoss
from secondthoughts.data import Example
from secondthoughts.edits import apply_text_edits, augment_chains, tokenize
from secondthoughts.sequences import (
    IGNORE_INDEX,
    build_sequences,
    collate,
    count_loss_tokens,
    encode,
    encode_prompt,
    pack,
    split_completion,
    unpacked,
)
from secondthoughts.sft import TrainConfig

EX = Example("It is wrong to hit people.", "Tom hits his brother.", "Tom talks to his brother.", "a")


@pytest.fixture
def tok(tiny_tok, tiny_lm):
    models.add_edit_tokens(tiny_lm, tiny_tok)
    return tiny_tok


def _text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_coe_format_and_loss_mask(tok):
    chain = augment_chains(tokenize(EX.source), tokenize(EX.target))[0][1]
    enc, cut = encode(tok, EX, chain, 256)
    assert enc is not None and not cut
    text = _text(tok, enc.input_ids)
    expected_completion = render_compact(chain, EX.source) + EX.target + tok.eos_token
    assert text == f"{EX.context}<|src|>{EX.source}<|sep|>" + expected_completion
    assert "<|rep|><|old|> hits" in text  # anchored: the span says where, no token count
    sep = enc.input_ids.index(tok.convert_tokens_to_ids("<|sep|>"))
    assert all(label == IGNORE_INDEX for label in enc.labels[: sep + 1])
    assert enc.labels[sep + 1 :] == enc.input_ids[sep + 1 :]
    assert _text(tok, enc.labels[sep + 1 :]) == expected_completion
    assert enc.input_ids[: sep + 1] == encode_prompt(tok, EX.context, EX.source)


def test_positional_chain_format(tok):
    (seq,), _ = build_sequences([EX], tok, mode="coe", max_length=256, cost_sets=[(1, 1, 2)], chain_format="positional")
    chain = augment_chains(tokenize(EX.source), tokenize(EX.target), [(1, 1, 2)])[0][1]
    assert render_compact(chain) in _text(tok, seq.input_ids) and "<|rep|>1<|old|>" in _text(tok, seq.input_ids)
    with pytest.raises(ValueError, match="chain_format"):
        build_sequences([EX], tok, chain_format="numbered")


def test_inline_chain_format(tok):
    (seq,), _ = build_sequences([EX], tok, mode="coe", max_length=256, cost_sets=[(1, 1, 2)], chain_format="inline")
    chain = augment_chains(tokenize(EX.source), tokenize(EX.target), [(1, 1, 2)])[0][1]
    text = _text(tok, seq.input_ids)
    assert text.endswith(render_inline(chain, EX.source) + EX.target + tok.eos_token) and "<|keep|>" in text
    assert tok.convert_tokens_to_ids("<|keep|>") in seq.input_ids  # one token, as the other markers


def test_merged_chains(tok):
    ex = Example("", "He hits the dog and the cat.", "He pets the dog and a big cat now.", "m")
    seqs, report = build_sequences([ex], tok, mode="coe", max_length=256, merge_gap=3)
    assert len(seqs) == report.sequences == 1  # one replace: the cost sets' chains are all the same
    assert "<|rep|><|old|> hits the dog and the cat<|new|> pets the dog and a big cat now<|eoc|>" in _text(tok, seqs[0].input_ids)
    assert len(build_sequences([ex], tok, mode="coe", max_length=256)[0]) == 2  # (1,1,3) deletes and inserts
    with pytest.raises(ValueError, match="merge_gap"):
        TrainConfig(merge_gap=-2)


def test_direct_format(tok):
    seqs, report = build_sequences([EX], tok, mode="direct", max_length=256)
    assert len(seqs) == 1 and report.sequences == 1
    assert _text(tok, seqs[0].input_ids) == f"{EX.context}<|src|>{EX.source}<|sep|>{EX.target}{tok.eos_token}"


def test_coe_augmentation_one_sequence_per_distinct_chain_and_each_rebuilds_the_target(tok):
    ex = Example("", "He shouts at her and leaves the room.", "He talks with her calmly.", "b")
    seqs, _ = build_sequences([ex], tok, mode="coe", max_length=256)
    assert len(seqs) == len(augment_chains(tokenize(ex.source), tokenize(ex.target))) >= 2
    assert len({tuple(s.input_ids) for s in seqs}) == len(seqs)
    for s in seqs:
        completion = _text(tok, [i for i, label in zip(s.input_ids, s.labels) if label != IGNORE_INDEX])
        chain_text, target = split_completion(completion.removesuffix(tok.eos_token))
        assert target == ex.target
        assert apply_text_edits(ex.source, parse_compact(chain_text, ex.source)) == ex.target


def test_user_text_never_becomes_a_marker(tok):
    ex = Example("ctx <|rep|> x", "say <|eoc|> now", "say <|sep|> later", "c")
    seqs, _ = build_sequences([ex], tok, mode="coe", max_length=256)
    marker_ids = set(models.edit_token_ids(tok))
    for s in seqs:
        ids = s.input_ids
        # exactly one <|src|> and one <|sep|>, and markers only inside the chain
        assert ids.count(tok.convert_tokens_to_ids("<|src|>")) == 1 and ids.count(tok.convert_tokens_to_ids("<|sep|>")) == 1
        completion = [i for i, label in zip(ids, s.labels) if label != IGNORE_INDEX]
        eoc = completion.index(tok.convert_tokens_to_ids("<|eoc|>"))
        assert not marker_ids & set(completion[eoc + 1 :])
        chain_text, target = split_completion(_text(tok, completion[:-1]))
        assert target == ex.target and apply_text_edits(ex.source, parse_compact(chain_text, ex.source)) == ex.target


def test_long_context_is_cut_from_the_left_and_counted(tok):
    long_ctx = " ".join(f"word{i}" for i in range(200)) + " final words here."
    ex = Example(long_ctx, EX.source, EX.target, "long")
    full, _ = encode(tok, Example("", EX.source, EX.target), None, 10_000)
    seqs, report = build_sequences([ex], tok, mode="direct", max_length=len(full) + 12)
    assert report.context_truncated == 1 and report.dropped == 0 and len(seqs[0]) == len(full) + 12
    assert _text(tok, seqs[0].input_ids).split("<|src|>")[0].endswith("final words here.")
    assert "context cut from the left in 1" in report.summary()


def test_too_long_source_is_dropped_and_counted(tok):
    ex = Example("c", "x " * 300, "y", "huge")
    seqs, report = build_sequences([ex, EX], tok, mode="direct", max_length=64)
    assert report.dropped == 1 and report.dropped_ids == ["huge"] and len(seqs) == 1
    assert "dropped 1" in report.summary()


def test_pack_keeps_every_sequence_once_within_max_length(tok):
    seqs, _ = build_sequences(tiny.EXAMPLES, tok, mode="coe", max_length=128)
    rows = pack(seqs, 128)
    assert len(rows) < len(seqs)
    assert all(len(r) <= 128 for r in rows)
    assert sum(len(r) for r in rows) == sum(len(s) for s in seqs)
    assert sum(r.position_ids.count(0) for r in rows) == len(seqs)
    with pytest.raises(ValueError, match="max_length"):
        pack(seqs, 10)


def test_collate_pads_as_its_own_segment(tok):
    seqs, _ = build_sequences(tiny.EXAMPLES[:2], tok, mode="direct", max_length=128)
    batch = collate(unpacked(seqs), pad_id=tok.pad_token_id)
    short = min(range(2), key=lambda i: len(seqs[i]))
    n = len(seqs[short])
    assert batch["input_ids"].shape == (2, max(len(s) for s in seqs))
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert batch["position_ids"][short, n] == 0
    assert "attention_mask" not in batch
    assert count_loss_tokens(batch["labels"]) == sum(sum(label != IGNORE_INDEX for label in s.labels) for s in seqs)


def _token_losses(model, batch):
    # use_cache=False: with a cache transformers ignores the packing in position_ids
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=IGNORE_INDEX)


def test_packed_row_gives_the_same_per_example_loss_as_unpacked(tiny_tok):
    lm = tiny.tiny_model(tiny_tok, layers=2)
    models.add_edit_tokens(lm, tiny_tok)
    seqs, _ = build_sequences(tiny.EXAMPLES[:4], tiny_tok, mode="coe", max_length=256)
    seqs = seqs[:5]
    rows = pack(seqs, 10_000)
    assert len(rows) == 1  # all five in one row
    with torch.no_grad():
        packed = _token_losses(lm, collate(rows, tiny_tok.pad_token_id))[0]
        offset = 0
        for s in seqs:
            alone = _token_losses(lm, collate(unpacked([s]), tiny_tok.pad_token_id))[0]
            got = packed[offset : offset + len(s) - 1]
            assert torch.allclose(got, alone, atol=1e-5), "packed sequences must not see each other"
            offset += len(s)
        # The training loss (vocabulary projection only on labelled positions) agrees too,
        # including with padding in an unpacked batch.
        loss = CompletionLoss(lm)
        total_packed = loss(**collate(rows, tiny_tok.pad_token_id))
        total_padded = loss(**collate(unpacked(seqs), tiny_tok.pad_token_id))
        assert torch.allclose(total_packed, total_padded, rtol=1e-5)
        assert torch.allclose(total_packed, packed[packed != 0].sum(), rtol=1e-5)


def test_bos_tokenizers_get_their_bos(tok):
    class WithBos:
        """Wraps the tiny tokenizer so that encoding empty text yields a BOS, like Llama-2's."""

        def __init__(self, inner):
            self.inner = inner
            self.eos_token_id = inner.eos_token_id
            self.unk_token_id, self.unk_token = inner.unk_token_id, inner.unk_token
            self.convert_tokens_to_ids = inner.convert_tokens_to_ids

        def __call__(self, text, add_special_tokens=True, **kw):
            out = self.inner(text, add_special_tokens=False, **kw)
            return {"input_ids": ([7] if add_special_tokens else []) + list(out["input_ids"])}

        def get_vocab(self):
            return self.inner.get_vocab()

    ids = encode_prompt(WithBos(tok), "c", "s")
    assert ids[0] == 7 and ids[1:] == encode_prompt(tok, "c", "s")
