"""secondthoughts.constraint_sets: the sets the chain constraint allowed at each position of
written completions, as index sets and as dense masks, position by position the processor's."""

from __future__ import annotations

import torch

from secondthoughts.constrained import (
    DONE,
    ChainConstraint,
    SourceIndex,
    advance,
    start_state,
)
from secondthoughts.constraint_sets import completion_masks, completion_sets


def test_completion_masks_follow_each_completion(voc, tok_with_edits):
    sources = ["Tom hits his brother.", "a b"]
    good = tok_with_edits("<|rep|>1<|old|> hits<|new|> hugs<|eoc|>", add_special_tokens=False)["input_ids"]
    (b,) = tok_with_edits(" b", add_special_tokens=False)["input_ids"][:1]
    (zero,) = tok_with_edits("0", add_special_tokens=False)["input_ids"]
    broken = [voc.dele, zero, voc.old, b, voc.eoc]  # deletes " b" at position 0, where "a" is
    size = len(voc.pieces) + 3
    masks, outside = completion_masks(voc, sources, [good, broken], size, chain_format="positional")
    assert masks.shape == (len(good) + len(broken), size) and outside == 1
    state = start_state()
    for j, t in enumerate(good):  # the sets the processor uses, position by position
        proc = ChainConstraint(voc, sources[:1], prompt_len=0, chain_format="positional")
        allowed_row = ~torch.isinf(proc(torch.tensor([good[:j]]), torch.zeros(1, size)))[0]
        assert torch.equal(masks[j], allowed_row) and masks[j, t]
        state = advance(state, t, voc, SourceIndex(sources[0], chain_format="positional"))
    assert state.phase == DONE
    rows = masks[len(good) :]
    assert rows[0].sum() == len(voc.op_markers) + 1  # after nothing: a marker or the end
    assert rows[1, zero] and rows[2, voc.old] and not rows[2].all()
    assert rows[3].all()  # " b" where the span is "a": outside the set, so this row allows all




def test_completion_sets_are_index_sets_built_into_masks_per_chunk(voc, tok_with_edits):
    """The sets of many positions share the vocabulary's few precomputed masks (a few ids each,
    not a vocabulary row), and any chunk of them builds the rows of the dense mask."""
    sources = ["Tom hits his brother.", "a b", "Rose hopes her friend forgets."]
    good = tok_with_edits("<|rep|>1<|old|> hits<|new|> hugs<|eoc|>", add_special_tokens=False)["input_ids"]
    (b,) = tok_with_edits(" b", add_special_tokens=False)["input_ids"][:1]
    (zero,) = tok_with_edits("0", add_special_tokens=False)["input_ids"]
    broken = [voc.dele, zero, voc.old, b, voc.eoc]
    text = tok_with_edits("<|ins|>0<|new|>Sadly, Rose<|eoc|>", add_special_tokens=False)["input_ids"]
    comps = [good, broken, text]
    size = len(voc.pieces) + 3
    sets = completion_sets(voc, sources, comps, size, chain_format="positional")
    dense, outside = completion_masks(voc, sources, comps, size, chain_format="positional")
    assert len(sets) == dense.shape[0] == sum(map(len, comps)) and sets.outside == outside == 1
    assert len(sets.shared) <= len(voc.text_ok) + 1  # text positions point at shared masks
    assert max(map(len, sets.ids)) < len(voc.pieces) // 4
    rows = []
    for start in range(0, len(sets), 4):
        stop = min(start + 4, len(sets))
        part = sets.part(start, stop)
        assert torch.equal(part.dense(), sets.dense(start, stop))
        rows.append(part.dense())
    assert torch.equal(torch.cat(rows), dense)
    for i, t in enumerate(t for c in comps for t in c):
        assert sets.allows(i, t) and dense[i, t]
    # the same sets, position by position, as the processor allows them while decoding
    for j, t in enumerate(text):
        proc = ChainConstraint(voc, sources[2:], prompt_len=0, chain_format="positional")
        assert torch.equal(dense[len(good) + len(broken) + j], ~torch.isinf(proc(torch.tensor([text[:j]]), torch.zeros(1, size)))[0])
