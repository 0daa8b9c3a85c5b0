"""The chain grammar behind constrained decoding, checked without a model: gold chains are
accepted token by token, random walks through the allowed sets always give chains that parse
and apply, and the processor masks per row."""

from __future__ import annotations

import random

import pytest
import torch

from secondthoughts.chain_text import (
    CHAIN_FORMATS,
    EOC,
    parse_chain,
    parse_compact,
    render_chain,
)
from secondthoughts.constrained import (
    BAD,
    DONE,
    OP,
    ChainConstraint,
    SourceIndex,
    _digits_ok,
    advance,
    allowed,
    start_state,
    walk,
)
from secondthoughts.edit_vocab import EditVocab, token_pieces
from secondthoughts.edits import (
    DEFAULT_COST_SETS,
    apply_edits,
    infer_text_edits,
    tokenize,
)

SOURCES = [
    "Tom hits his brother when he is angry.",
    "Rose <|hopes|> her friend \\ forgets the money.",
    "Caf\u00e9 \u00fcber \u4e2d\u6587 | < | \\\\ done  ",
    "a",
    "",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22",
]
TARGETS = [
    "Tom talks to his brother when he is calm.",
    "Rose <|offers|> to pay her \\| friend back.",
    "Cafe \u00fcber <|new|> | \\ done",
    "b c",
    "inserted",
    "0 1 2 3 x 5 6 7 8 9 10 11 12 y 14 15 16 17 18 19 20 21 22 23",
]


def _ids(voc: EditVocab, allowed_set) -> list[int]:
    if allowed_set is None:
        return list(range(len(voc.pieces)))
    if isinstance(allowed_set, torch.Tensor):
        return allowed_set.nonzero().flatten().tolist()
    return list(allowed_set)


def test_pieces_round_trip(tok_with_edits):
    pieces = token_pieces(tok_with_edits)
    text = "He \u00fcber caf\u00e9s 123 <|x \\"
    ids = tok_with_edits(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert b"".join(pieces[i] for i in ids) == text.encode()
    assert pieces[tok_with_edits.convert_tokens_to_ids("<|rep|>")] is None  # markers are never text


def test_position_prefixes():
    assert _digits_ok("", ("3",)) and not _digits_ok("", ())
    assert _digits_ok("1", ("2", "15")) and not _digits_ok("1", ("2", "21")) and _digits_ok("15", ("15",))
    assert not _digits_ok("01", ("0", "1", "10")) and not _digits_ok("3", ())
    index = SourceIndex("Tom hits his brother and his dog.")  # his: tokens 2 and 5
    assert index.positions("delete", 0) == ("5",)  # only where the span alone would not find it
    assert index.positions("delete", 3) == ()  # from token 3 on, " his" first occurs at 5
    assert index.positions("insert", 0) == ("0", "6")  # the start, and after the second " his"
    assert index.positions("insert", 0, here=True) == ("6",)  # the start is <|ins|><|new|>
    assert index.anchors("insert", 3, here=True) == (3, 4, 6, 7)  # not " his", which the edit before took at 2
    assert SourceIndex("a b", chain_format="positional").positions("insert", 1) == ("1", "2")


def _accepts(voc: EditVocab, tok, src: str, tgt: str, costs, fmt: str) -> None:
    chain = infer_text_edits(src, tgt, costs)
    text = render_chain(chain, src, fmt)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    index = SourceIndex(src, fmt)
    state = start_state()
    for t in ids:
        assert t in _ids(voc, allowed(state, voc, index, "stop")), f"{voc.decode([t])!r} refused in {state.describe()}"
        state = advance(state, t, voc, index)
        assert state.phase != BAD
    assert state.phase == DONE
    assert voc.decode(ids) == text


@pytest.mark.parametrize("fmt", CHAIN_FORMATS)
@pytest.mark.parametrize("k", range(len(SOURCES)))
def test_gold_chains_are_accepted(voc, tok_with_edits, k, fmt):
    for costs in DEFAULT_COST_SETS:
        _accepts(voc, tok_with_edits, SOURCES[k], TARGETS[k], costs, fmt)


def test_chains_of_random_pairs_under_every_cost_set_are_accepted(voc, tok_with_edits):
    """The canonical order the grammar asks for is the one the DP writes, whatever the costs."""
    rng = random.Random(0)
    words = ["a", "b", "c", " d", ".", "<|", "\\", "x y"]
    for _ in range(150):
        src = "".join(rng.choices(words, k=rng.randint(0, 8)))
        tgt = "".join(rng.choices(words, k=rng.randint(0, 8)))
        for costs in (*DEFAULT_COST_SETS, (1, 2, 1.5), (2, 1, 2.5)):
            for fmt in CHAIN_FORMATS:
                _accepts(voc, tok_with_edits, src, tgt, costs, fmt)


def test_bad_tokens_are_refused(voc, tok_with_edits):
    index = SourceIndex("Tom hits his brother.", chain_format="positional")  # 5 tokens

    def run(text: str) -> int:
        return walk(tok_with_edits(text, add_special_tokens=False)["input_ids"], voc, index).phase

    assert run("<|del|>5<|old|>") == BAD  # no token 5 to delete
    assert run("<|ins|>5<|new|> x<|eoc|>") == DONE  # inserting at the end is fine
    assert run("<|rep|>1<|old|> his") == BAD  # the source has " hits" there
    assert run("<|rep|>1<|old|> hi<|new|>") == BAD  # not an edit-token boundary
    assert run("<|rep|>2<|old|> his<|new|> her<|del|>1") == BAD  # before the previous edit's end
    assert run("<|ins|>01<|new|>") == BAD  # leading zero
    assert run("<|ins|>1<|new|><|eoc|>") == BAD  # empty text
    assert run("<|ins|>1<|new|> a<|x") == BAD  # an unescaped marker start in text
    assert run("<|eoc|>") == DONE
    # only the canonical order of infer_edits: replace, delete, insert where the previous ends
    assert run("<|rep|>1<|old|> hits<|new|> x<|del|>2<|old|> his<|ins|>3<|new|> y<|eoc|>") == DONE
    assert run("<|ins|>5<|new|> x<|ins|>5") == BAD  # two inserts at one place
    assert run("<|rep|>1<|old|> hits<|new|> x<|rep|>2") == BAD  # one replace split in two
    assert run("<|del|>1<|old|> hits<|rep|>2") == BAD
    assert run("<|del|>1<|old|> hits<|rep|>3<|old|> brother<|new|> y<|eoc|>") == DONE


def test_anchored_chains_copy_spans_and_write_positions_only_where_needed(voc, tok_with_edits):
    index = SourceIndex("Tom hits his brother and his dog.")  # " his" at tokens 2 and 5

    def run(text: str) -> int:
        return walk(tok_with_edits(text, add_special_tokens=False)["input_ids"], voc, index).phase

    assert run("<|rep|><|old|> hits<|new|> hugs<|eoc|>") == DONE
    assert run("<|del|><|old|> his brother<|eoc|>") == DONE  # the first " his brother"
    assert run("<|del|>5<|old|> his<|eoc|>") == DONE  # the second " his" needs its position
    assert run("<|del|>2") == BAD  # the span alone finds token 2: no position there
    assert run("<|del|>5<|old|> his dog") == BAD  # " his dog" alone finds it: no position
    assert run("<|del|><|old|> cat") == BAD  # not in the source
    assert run("<|rep|><|old|> hits<|new|> x<|rep|><|old|> his brother") == BAD  # must be past a kept token
    assert run("<|rep|><|old|> hits<|new|> x<|rep|><|old|> his<|new|> y<|eoc|>") == DONE  # so this is token 5
    assert run("<|rep|><|old|> hits<|new|> x<|del|><|old|> his<|eoc|>") == DONE  # one changed block
    assert run("<|ins|><|old|> brother<|new|> X<|eoc|>") == DONE  # after its one-token anchor
    assert run("<|ins|><|old|> his brother") == BAD  # an anchor is one token
    assert run("<|ins|><|new|> Oh,<|eoc|>") == DONE  # the start has no anchor: "here"
    assert run("<|ins|>0") == BAD  # so no position either
    assert run("<|ins|>1") == BAD  # "Tom" anchors token 1
    assert run("<|ins|><|new|> Oh,<|ins|><|new|>") == BAD  # two inserts at one place
    # Right after a delete: "here", never an anchor the delete took (nor a later copy of it, which finds it first).
    for text, at in [("<|del|><|old|> his<|ins|><|new|> a<|eoc|>", 3), ("<|del|><|old|> his<|ins|>6<|new|> a<|eoc|>", 6)]:
        ids = tok_with_edits(text, add_special_tokens=False)["input_ids"]
        assert walk(ids, voc, index).phase == DONE
        assert [(e.op, e.start) for e in parse_compact(voc.decode(ids), index.tokens)] == [("delete", 2), ("insert", at)]
    assert run("<|del|><|old|> his<|ins|><|old|> his") == BAD
    assert run("<|del|><|old|> his<|ins|>3") == BAD


def test_a_replace_cannot_close_on_its_own_span(voc, tok_with_edits):
    index = SourceIndex("Tom hits his brother.", chain_format="positional")
    closers = {voc.eoc, *voc.op_markers}

    def closing(text: str) -> set[int]:
        state = walk(tok_with_edits(text, add_special_tokens=False)["input_ids"], voc, index)
        return closers & set(_ids(voc, allowed(state, voc, index, "stop")))

    assert closing("<|rep|>1<|old|> hits<|new|> hits") == set()  # a no-op edit: the text must go on
    assert voc.eoc in closing("<|rep|>1<|old|> hits<|new|> hit")
    assert voc.eoc in closing("<|rep|>1<|old|> hits<|new|> hits him")
    assert voc.eoc in closing("<|rep|>1<|old|> hits his<|new|> hits")  # a shorter text is a real edit


@pytest.mark.parametrize("fmt", CHAIN_FORMATS)
@pytest.mark.parametrize("seed", range(60))
def test_random_walks_always_parse_and_apply(voc, seed, fmt):
    """Any path through the allowed sets, cut anywhere, gives a chain that applies."""
    rng = random.Random(seed)
    src = SOURCES[seed % len(SOURCES)]
    index = SourceIndex(src, fmt)
    state, ids = start_state(), []
    for _ in range(rng.randint(1, 80)):
        options = _ids(voc, allowed(state, voc, index, "stop"))
        # favour markers so that walks visit every phase, not only long texts
        markers = [i for i in options if voc.pieces[i] is None]
        t = rng.choice(markers if markers and rng.random() < 0.3 else options)
        ids.append(t)
        state = advance(state, t, voc, index)
        assert state.phase != BAD
        if state.phase == DONE:
            break
    text = voc.decode(ids) if state.phase == DONE else voc.decode(ids[: state.closable_at]) + EOC
    chain = parse_chain(text, src, fmt)
    apply_edits(tokenize(src), chain)
    assert render_chain(chain, src, fmt) == text  # canonical: nothing the renderer writes differently


def test_processor_masks_each_row_from_its_own_ids(voc, tok_with_edits):
    proc = ChainConstraint(voc, ["Tom hits his brother.", "a b"], prompt_len=1, chain_format="positional")
    (one,) = tok_with_edits("1", add_special_tokens=False)["input_ids"]
    (hit,) = tok_with_edits(" hits", add_special_tokens=False)["input_ids"][:1]
    (b,) = tok_with_edits(" b", add_special_tokens=False)["input_ids"][:1]
    # 2 inputs x 2 beams (rows 0-1: first source, rows 2-3: second), all after a 1-token prompt
    ids = torch.tensor([
        [7, voc.ins, one, voc.new],  # inside an insert's text, still empty
        [7, voc.rep, one, voc.old],  # at the start of the span " hits ..."
        [7, voc.eoc, 7, 7],  # finished
        [7, voc.rep, one, voc.old],  # at the start of the span " b"
    ])  # fmt: skip
    scores = torch.zeros(4, len(voc.pieces) + 3)  # models often have padded vocabularies
    out = proc(ids, scores)
    free = ~torch.isinf(out)
    assert free[0].sum() > len(voc.pieces) // 2 and not free[0, voc.eoc]  # text, but not empty text
    assert free[1, hit] and not free[1, b] and not free[1, voc.new]
    assert free[3, b] and not free[3, hit]
    assert free[2].sum() == 1 and free[2, voc.eos]  # a finished row may only end
    assert not free[[0, 1, 3], len(voc.pieces) :].any()  # padding ids are never allowed


def test_start_state_after_a_prefix(voc, tok_with_edits):
    index = SourceIndex("Tom hits his brother.", chain_format="positional")
    state = start_state(cursor=3, prev="replace")
    assert state.phase == OP
    ids = tok_with_edits("<|del|>2", add_special_tokens=False)["input_ids"]
    assert walk(ids, voc, index, state).phase == BAD  # position 2 lies inside the prefix
    ids = tok_with_edits("<|del|>3<|old|> brother<|eoc|>", add_special_tokens=False)["input_ids"]
    assert walk(ids, voc, index, state).phase == DONE  # a delete right after the prefix's replace
    assert start_state(closed=True).phase == DONE
