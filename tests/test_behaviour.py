import math

import pytest

from secondthoughts.behaviour import copies_context, identical, kept_share, sentences, summarize

CONTEXT = "It's wrong to take credit for others' work. Mia wrote the report with Leo. Mia is ambitious."


def test_sentences_split_on_ends_and_lines() -> None:
    assert sentences("A b. C d!\nE f?  ") == ["A b.", "C d!", "E f?"]


def test_identical_ignores_surrounding_whitespace_only() -> None:
    assert identical("Mia lies.", "  Mia lies.\n")
    assert not identical("Mia lies.", "Mia lies")


def test_copies_context_ignores_case_and_punctuation() -> None:
    assert copies_context(CONTEXT, "Sure. it's WRONG to take credit for others work, so she stops.")
    assert copies_context(CONTEXT, "Mia wrote the report with Leo")
    # a short sentence is not a copy; a paraphrase is not a copy
    assert not copies_context(CONTEXT, "Mia is ambitious.")
    assert not copies_context(CONTEXT, "Mia credits Leo for the report.")
    assert not copies_context(CONTEXT, "")


def test_kept_share_is_lcs_over_source_length() -> None:
    assert kept_share("a b c d", "a b c d") == 1.0
    # tokens carry their leading space: ("a", " b", " c") vs ("a", " x", " c") keeps 2 of 3
    assert kept_share("a b c", "a x c") == pytest.approx(2 / 3)
    assert kept_share("a b", "") == 0.0
    assert kept_share("", "anything") == 1.0


def test_summarize_shares() -> None:
    out = summarize([CONTEXT, CONTEXT], ["Mia lies.", "Mia lies."], ["Mia lies.", "Mia wrote the report with Leo."])
    assert out["identical"] == 0.5
    assert out["copies_context"] == 0.5
    assert 0 < out["kept"] < 1
    assert all(math.isnan(v) for v in summarize([], [], []).values())
    with pytest.raises(ValueError, match="lengths differ"):
        summarize(["c"], [], ["t"])


def test_stub_deletion_and_template_guards() -> None:
    from secondthoughts.behaviour import nothing_new, opening, short

    src = "Tom keeps the ladder and hides it behind his boxes."
    assert short(src, "Tom asks.") and not short(src, "Tom gives the ladder back to his neighbour.")
    assert nothing_new(src, "Tom keeps the ladder.") and not nothing_new(src, "Tom returns the ladder.")
    assert not nothing_new("Tom lies.", "Tom lies.")  # not shorter: nothing was deleted
    assert opening("Tom asks if he can stay.") == ("asks", "if")
    texts = ["Tom asks if he can go.", "Ann asks if she can help.", "Ann asks if she can help.", "Leo returns the ladder to Ann."]
    out = summarize(["c"] * 4, ["Tom lies to his boss.", "Ann steals from the shop.", "Ann steals from the shop.", "Leo keeps the ladder."], texts)
    assert out["distinct"] == pytest.approx(3 / 4) and out["top_opening"] == pytest.approx(3 / 4)
    assert out["short"] == 0.0 and out["nothing_new"] == 0.0
