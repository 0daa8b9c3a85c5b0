"""Readable chains (``secondthoughts.readable``): friendly, exact, disambiguated, and errors that say where."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondthoughts.chain_text import render_compact
from secondthoughts.edits import Edit, EditError, apply_text_edits, infer_text_edits
from secondthoughts.readable import (
    apply_subset,
    as_chain,
    parse_readable,
    render_readable,
)


def test_readable_is_friendly_and_exact():
    src = "He hits the dog and asks the cat."
    tgt = "He talks to the dog and politely asks the cat."
    chain = infer_text_edits(src, tgt)
    text = render_readable(chain, src)
    assert text.splitlines() == ['replace "hits" with "talks"', 'insert "to" after "hits"', 'insert "politely" after "and"']
    # What a person types: spaces left out, a multi-word replace.
    mine = parse_readable('replace "hits" with "talks to"\ninsert "politely" after "and"', src)
    assert apply_text_edits(src, mine) == tgt


def test_readable_disambiguates_repeated_words():
    src = "the cat and the dog"
    chain = [Edit("delete", 3, (" the",))]
    text = render_readable(chain, src)
    assert text == 'delete " the"'
    assert parse_readable(text, src) == chain
    assert parse_readable('delete " the" at token 3', src) == chain
    assert parse_readable('delete "the"\ndelete "dog"', src) == [Edit("delete", 0, ("the",)), Edit("delete", 4, (" dog",))]


@pytest.mark.parametrize(
    "text, message",
    [
        ('remove "hits"', "line 1: cannot read"),
        ('delete "zebra"', "not found in the source"),
        ('delete "dog"\ndelete "hits"', "line 2: .*not found"),
        ('delete "hits" at token 3', "not at token 3"),
        ('insert "" at start', "empty text"),
        ('replace "" with "She" at token 0', "line 1: replace of empty text"),
        ('replace "He" with ""', "line 1: replace with empty text; write `delete \"He\"`"),
    ],
)
def test_malformed_readable_says_what_and_where(text, message):
    with pytest.raises(EditError, match=message):
        parse_readable(text, "He hits the dog.")


_QUOTED = st.lists(st.sampled_from(["Tom", "hits", " hits", "Tom ", "his", " ", "", ".", "x"]), max_size=3).map("".join)
_LINE = st.one_of(
    st.builds('replace "{}" with "{}"'.format, _QUOTED, _QUOTED),
    st.builds('delete "{}"'.format, _QUOTED),
    st.builds('insert "{}" after "{}"'.format, _QUOTED, _QUOTED),
    st.builds('insert "{}" at start'.format, _QUOTED),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(_LINE, st.builds("{} at token {}".format, _LINE, st.integers(0, 6))), max_size=3),
       source=st.sampled_from(["Tom hits his brother.", "Tom  hits x.", "x"]))
def test_any_readable_lines_are_refused_or_apply(lines, source):
    """What people type is either refused with an EditError or a chain that applies: never an edit that
    fails later (an empty replace or delete once reached the editor as a 500)."""
    try:
        edits = parse_readable("\n".join(lines), source)
    except EditError:
        return
    as_chain(edits, source)


# ---------------------------------------------------------------- chains given by people

SRC = "Tom hits his brother when he is angry."


def test_apply_subset():
    tgt = "Tom talks to his brother when he is calm."
    chain = infer_text_edits(SRC, tgt)
    assert len(chain) == 3
    assert apply_subset(SRC, chain, [True] * 3) == tgt
    assert apply_subset(SRC, chain, [False] * 3) == SRC
    assert apply_subset(SRC, render_compact(chain), [False, False, True]) == "Tom hits his brother when he is calm."
    with pytest.raises(ValueError, match="3 edits"):
        apply_subset(SRC, chain, [True])


def test_as_chain_forms_agree():
    chain = infer_text_edits(SRC, "Tom talks to his brother.")
    assert as_chain(render_compact(chain), SRC) == (chain, True)
    assert as_chain(render_readable(chain, SRC), SRC) == (chain, False)
    assert as_chain([e.to_dict() for e in chain], SRC) == (chain, False)  # type: ignore[arg-type]
