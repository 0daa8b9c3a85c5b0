"""Chain-of-edits engine: minimality against a plain DP, round trips, clear errors."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthoughts import edits as E
from secondthoughts.chain_text import (
    CHAIN_FORMATS,
    SPECIAL_TOKENS,
    escape,
    parse_chain,
    parse_compact,
    render_chain,
    render_compact,
    render_inline,
    unescape,
)
from secondthoughts.edits import (
    Edit,
    EditError,
    apply_edits,
    apply_text_edits,
    augment_chains,
    chain_cost,
    detokenize,
    infer_edits,
    infer_text_edits,
    merge_close_edits,
    tokenize,
)
from secondthoughts.readable import parse_readable, render_readable


def reference_cost(a: list, b: list, ci: float, cd: float, cr: float) -> float:
    """Textbook Wagner-Fischer DP, written independently of the package."""
    d = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        d[i][0] = i * cd
    for j in range(1, len(b) + 1):
        d[0][j] = j * ci
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            sub = d[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else cr)
            d[i][j] = min(sub, d[i - 1][j] + cd, d[i][j - 1] + ci)
    return d[len(a)][len(b)]


tokens_st = st.lists(st.sampled_from("abcde"), max_size=12)
cost_st = st.floats(min_value=0.1, max_value=5, allow_nan=False).map(lambda x: round(x, 2))
costs_st = st.tuples(cost_st, cost_st, cost_st) | st.sampled_from([(1, 1, 2), (1, 1, 1), (2, 2, 2), (1, 2, 3)])


@settings(max_examples=400, deadline=None)
@given(tokens_st, tokens_st, costs_st)
def test_infer_is_minimal_and_applies(a, b, costs):
    chain = infer_edits(a, b, *costs)
    assert apply_edits(a, chain) == b
    assert math.isclose(chain_cost(chain, *costs), reference_cost(a, b, *costs), rel_tol=1e-9, abs_tol=1e-9)
    assert infer_edits(a, b, *costs) == chain  # deterministic


@pytest.mark.skipif(E._cdp is None, reason="C extension not built")
@settings(max_examples=400, deadline=None)
@given(tokens_st, tokens_st, costs_st)
def test_c_extension_and_numba_dp_write_the_same_chain(a, b, costs):
    costs = E._check_costs(costs)
    assert E._cdp.infer(tuple(a), tuple(b), *costs) == E._dp_chains([(tuple(a), tuple(b))], costs)[0]


@pytest.mark.skipif(E._cdp is None, reason="C extension not built")
def test_without_c_extension_the_chains_are_the_same(monkeypatch):
    """Ties between minimum-cost chains are broken the same way with or without a compiler: an
    LCS aligner (rapidfuzz) would choose other equally cheap chains for these."""
    pairs = [
        ("Sam decides to skip some of his lessons, so he can have more time to play.".split(),
         "Sam asks his coach to help with the training plan so as not to fall behind.".split()),
        (list("abcabba"), list("cbabac")), (list("xaybzc"), list("abxcyz")),
    ]  # fmt: skip
    for costs in [(1, 1, 2), (1, 1, 3), (1, 1, 1), (1, 1.5, 1.2)]:
        with_c = E.infer_edits_many(pairs, *costs)
        monkeypatch.setattr(E, "_cdp", None)
        assert E.infer_edits_many(pairs, *costs) == with_c
        assert [infer_edits(a, b, *costs) for a, b in pairs] == with_c
        monkeypatch.undo()


def test_without_c_extension_the_fallback_is_minimal(monkeypatch):
    monkeypatch.setattr(E, "_cdp", None)
    pairs = [(list("abcabba"), list("cbabac")), (list("kitten"), list("sitting")), ([], list("ab")), (list("ab"), [])]
    for costs in [(1, 1, 2), (1, 1.5, 1.2), (1, 1, 1)]:
        chains = E.infer_edits_many(pairs, *costs)
        for (a, b), chain in zip(pairs, chains):
            assert apply_edits(a, chain) == b
            assert math.isclose(chain_cost(chain, *costs), reference_cost(a, b, *costs))
            assert chain == infer_edits(a, b, *costs)


def test_tokens_that_fail_to_compare_raise():
    class Bad:
        def __hash__(self):
            return 1

        def __eq__(self, other):
            raise RuntimeError("no comparing")

    with pytest.raises(RuntimeError, match="no comparing"):
        infer_edits([Bad(), 1], [Bad(), 2], 1, 1.5, 1.2)


@settings(max_examples=400, deadline=None)
@given(tokens_st, tokens_st, costs_st)
def test_fast_path_matches_general_dp_cost(a, b, costs):
    """Where the rapidfuzz path answers, it agrees with the compiled DP on the optimum."""
    fast = E._rapidfuzz_chain(tuple(a), tuple(b), costs)
    (slow,) = E._dp_chains([(tuple(a), tuple(b))], costs)
    assert apply_edits(a, slow) == b
    assert math.isclose(chain_cost(slow, *costs), reference_cost(a, b, *costs), rel_tol=1e-9, abs_tol=1e-9)
    if fast is not None:
        assert apply_edits(a, fast) == b
        assert math.isclose(chain_cost(fast, *costs), chain_cost(slow, *costs), rel_tol=1e-9, abs_tol=1e-9)


def test_both_paths_are_exercised_for_non_uniform_costs():
    costs = (1.0, 1.5, 1.2)
    leaning_one_way = (tuple("abc"), tuple("axc"))
    leaning_both_ways = (tuple("abcxyz"), tuple("ac1x2yz3"))  # one block deletes more, another inserts more
    assert E._rapidfuzz_chain(*leaning_one_way, costs) is not None
    assert E._rapidfuzz_chain(*leaning_both_ways, costs) is None
    assert E.infer_edits_many([leaning_one_way, leaning_both_ways], *costs) == [
        infer_edits(*leaning_one_way, *costs),
        infer_edits(*leaning_both_ways, *costs),
    ]


@settings(max_examples=200, deadline=None)
@given(tokens_st, tokens_st, costs_st)
def test_neighbouring_ops_of_a_kind_are_merged(a, b, costs):
    chain = infer_edits(a, b, *costs)
    for e, f in zip(chain, chain[1:]):
        assert e.start <= f.start
        if e.op == f.op:  # same kind only where something lies between them
            assert f.start > e.end or (e.op == "insert" and f.start > e.start)


def test_replace_spans_and_paper_costs():
    src, tgt = "He hits the dog angrily .".split(), "He talks to the dog .".split()
    chain = infer_edits(src, tgt)
    assert apply_edits(src, chain) == tgt
    assert chain_cost(chain) == reference_cost(src, tgt, 1, 1, 2) == 4
    assert [e.op for e in chain] == ["replace", "insert", "delete"]


def test_any_hashable_tokens():
    # -1 and -2 share a hash in CPython: non-string tokens must get exact ids.
    a, b = [1, (2, 3), None, "x", -1, -2], [(2, 3), "x", 7, -2, -1]
    for costs in [(1, 1.5, 1.2), (1, 1, 2), (1, 1, 1)]:
        chain = infer_edits(a, b, *costs)
        assert apply_edits(a, chain) == b
        assert math.isclose(chain_cost(chain, *costs), reference_cost(a, b, *costs))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(tokens_st, tokens_st), max_size=8), costs_st)
def test_batch_equals_one_by_one(pairs, costs):
    assert E.infer_edits_many(pairs, *costs) == [infer_edits(a, b, *costs) for a, b in pairs]


@pytest.mark.parametrize("costs", [(0, 1, 1), (1, -1, 1), (1, 1, float("nan")), (1, 1, float("inf"))])
def test_bad_costs_are_refused(costs):
    with pytest.raises(ValueError, match="costs"):
        infer_edits(["a"], ["b"], *costs)


def test_apply_refuses_bad_chains():
    src = ["a", "b", "c"]
    with pytest.raises(EditError, match="expects"):
        apply_edits(src, [Edit("delete", 1, ("x",))])
    with pytest.raises(EditError, match="overlaps"):
        apply_edits(src, [Edit("delete", 0, ("a", "b")), Edit("replace", 1, ("b",), ("y",))])
    with pytest.raises(EditError, match="past the end"):
        apply_edits(src, [Edit("delete", 2, ("c", "d"))])
    with pytest.raises(EditError, match="past the end"):
        apply_edits(src, [Edit("insert", 4, (), ("z",))])
    with pytest.raises(EditError, match="non-empty"):
        apply_edits(src, [Edit("insert", 0, ("a",), ("b",))])
    with pytest.raises(EditError, match="unknown edit op"):
        apply_edits(src, [Edit("swap", 0, ("a",), ("b",))])
    assert apply_edits(src, [Edit("insert", 3, (), ("d",))]) == ["a", "b", "c", "d"]


def test_edit_dict_round_trip():
    e = Edit("replace", 2, ("a",), ("b", "c"))
    assert Edit.from_dict(e.to_dict()) == e
    with pytest.raises(EditError, match="lacks field 'start'"):
        Edit.from_dict({"op": "delete"})


# ------------------------------------------------------------------ text

adversarial = st.sampled_from(
    [*SPECIAL_TOKENS, "<|", "|>", "\\", "\\|", "<\\|", "<|eoc", '"', "\\\"", "\n", "\t", "  ", "é", "👍🏽", "e\u0301", "’", "'", "—", "at token 3", "after", "insert", " with "]
)
text_st = st.lists(st.text(max_size=6) | adversarial | st.sampled_from([" the", " dog", " a", ".", ","]), max_size=10).map("".join)


@settings(max_examples=300, deadline=None)
@given(text_st)
def test_tokenize_is_exact(text):
    assert detokenize(tokenize(text)) == text
    assert tokenize(detokenize(tokenize(text))) == tokenize(text)


@settings(max_examples=300, deadline=None)
@given(st.text() | text_st)
def test_escape_hides_every_marker(text):
    esc = escape(text)
    assert not any(t in esc for t in SPECIAL_TOKENS) and "<|" not in esc
    assert unescape(esc) == text


@settings(max_examples=300, deadline=None)
@given(text_st, text_st, costs_st)
def test_text_chains_round_trip_every_rendering(src, tgt, costs):
    chain = infer_text_edits(src, tgt, costs)
    assert apply_text_edits(src, chain) == tgt
    compact = render_compact(chain)
    assert parse_compact(compact) == chain
    anchored = render_compact(chain, src)
    assert parse_compact(anchored, src) == chain
    for fmt in CHAIN_FORMATS:
        assert parse_chain(render_chain(chain, src, fmt), src, fmt) == chain
    inline = render_inline(chain, src)
    assert parse_compact(inline, src) == chain  # read as inline when it keeps text, as anchored (the same edits) when not
    readable = render_readable(chain, src)
    assert parse_readable(readable, src) == chain


def test_very_long_inputs_round_trip():
    src = " ".join(f"w{i % 97}" for i in range(3000)) + " <|eoc|> end"
    tgt = src.replace("w5 ", "word five ").replace("<|eoc|>", "<|ins|>")
    chain = infer_text_edits(src, tgt, (1, 1.5, 1.2))
    assert apply_text_edits(src, chain) == tgt
    assert parse_compact(render_compact(chain)) == chain
    assert parse_compact(render_compact(chain, src), src) == chain
    assert parse_readable(render_readable(chain, src), src) == chain


@settings(max_examples=200, deadline=None)
@given(text_st, text_st, costs_st, st.integers(0, 3))
def test_merged_chains_apply_and_keep_more_text_between_edits(src, tgt, costs, gap):
    s = tokenize(src)
    chain = infer_text_edits(src, tgt, costs)
    merged = merge_close_edits(s, chain, gap)
    assert apply_edits(s, merged) == tokenize(tgt) and len(merged) <= len(chain)
    assert all(b.start - a.end > gap for a, b in zip(merged, merged[1:]))
    assert merge_close_edits(s, merged, gap) == merged
    for fmt in CHAIN_FORMATS:
        assert parse_chain(render_chain(merged, src, fmt), src, fmt) == merged


def test_merging_joins_edits_around_shared_words():
    src = "He hits the dog and the cat."
    chain = infer_text_edits(src, "He pets the dog and a big cat now.")
    assert len(chain) == 4
    s = tokenize(src)
    assert render_compact(merge_close_edits(s, chain, 0), src) == "<|rep|><|old|> hits<|new|> pets<|rep|><|old|> the<|new|> a big<|ins|><|old|> cat<|new|> now<|eoc|>"
    assert render_compact(merge_close_edits(s, chain, 1), src) == "<|rep|><|old|> hits<|new|> pets<|rep|><|old|> the cat<|new|> a big cat now<|eoc|>"
    assert merge_close_edits(s, chain, 3) == [Edit("replace", 1, tuple(s[1:7]), tuple(tokenize(" pets the dog and a big cat now")))]
    # a cost set's own style goes where merging joins its edits: fewer distinct chains per pair
    assert len(augment_chains(s, tokenize("He pets the dog and a big cat now."), merge_gap=3)) == 1
    with pytest.raises(ValueError, match="gap"):
        merge_close_edits(s, chain, -1)


def test_augmentation_gives_distinct_chains():
    src, tgt = tokenize("He hits the dog angrily."), tokenize("He talks to the dog politely when he asks.")
    out = augment_chains(src, tgt, [(1, 1, 2), (1, 1, 2.0), (1, 1, 3), (1, 1, 1), (1, 2, 2)])
    chains = [tuple(c) for _, c in out]
    assert len(chains) == len(set(chains)) >= 2
    assert out[0][0] == (1.0, 1.0, 2.0)
    for costs, chain in out:
        assert apply_edits(src, chain) == tgt


def test_edits_module_does_not_import_torch():
    import subprocess

    code = "import sys, secondthoughts.edits as e, secondthoughts.chain_text; e.infer_edits('ab','ba',1,1.5,1.2); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_realigned_text_applies_a_chain_but_refuses_one_that_leaves_nothing() -> None:
    src, tgt = "Tom hits his brother.", "Tom hugs his brother."
    assert E.realigned_text(src, E.infer_text_edits(src, tgt)) == tgt
    assert E.realigned_text(src, E.infer_text_edits(src, "Tom.")) == "Tom."
    for nothing in ("", "."):
        with pytest.raises(E.EditError, match="the chain deletes every word"):
            E.realigned_text(src, E.infer_text_edits(src, nothing))
