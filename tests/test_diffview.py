"""The one diff model (``diffview.segments``) and its three views: terminal, web editor JSON, report."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthoughts import diffview
from secondthoughts.api_messages import diff_segments
from secondthoughts.diffview import Segment, segments
from secondthoughts.edits import infer_text_edits, tokenize
from secondthoughts.evaluate import markdown_diff
from secondthoughts.readable import apply_subset

SOURCE = "He hits the dog angrily."
CHAIN = infer_text_edits(SOURCE, "He talks to the dog politely.")  # replace, insert, replace


def test_segments_by_hand() -> None:
    assert segments(tokenize(SOURCE), CHAIN) == [
        Segment("same", "He"), Segment("del", " hits", 0), Segment("ins", " talks", 0), Segment("ins", " to", 1),
        Segment("same", " the dog"), Segment("del", " angrily", 2), Segment("ins", " politely", 2), Segment("same", "."),
    ]  # fmt: skip
    # A rejected edit keeps its source text ("off"); a rejected insert has none to show.
    assert segments(tokenize(SOURCE), CHAIN, [False, False, True]) == [
        Segment("same", "He"), Segment("off", " hits", 0), Segment("same", " the dog"), Segment("del", " angrily", 2),
        Segment("ins", " politely", 2), Segment("same", "."),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="2 keep flags for a chain of 3 edits"):
        segments(tokenize(SOURCE), CHAIN, [True, False])


def test_the_three_views_draw_the_same_segments() -> None:
    segs = segments(tokenize(SOURCE), CHAIN)
    text = diffview.inline_diff(tokenize(SOURCE), CHAIN)
    assert text.plain == "".join(s.text for s in segs)
    assert [(text.plain[sp.start : sp.end], str(sp.style)) for sp in text.spans] == [
        (s.text, diffview.TERMINAL_STYLES[s.kind]) for s in segs if s.kind != "same"
    ]
    assert diff_segments(SOURCE, CHAIN, [True] * 3) == [asdict(s) for s in segs]
    assert markdown_diff(SOURCE, CHAIN) == "He<del> hits</del><ins> talks</ins><ins> to</ins> the dog<del> angrily</del><ins> politely</ins>."


def test_report_cells_escape_html_and_table_syntax() -> None:
    src = "a <b> & c | d\ne"
    cell = markdown_diff(src, infer_text_edits(src, "a <i> & c || d\ne"))
    assert cell == "a &lt;<del>b</del><ins>i</ins>&gt; &amp; c &#124;<ins>&#124;</ins> d e"


words = st.lists(st.sampled_from(["a", "b", "the", "dog", ",", "."]), max_size=8).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(words, words, st.lists(st.booleans(), min_size=16, max_size=16))
def test_segments_read_back_as_source_and_as_the_edited_text(source: str, target: str, flags: list[bool]) -> None:
    chain = infer_text_edits(source, target)
    keep = flags[: len(chain)]
    segs = segments(tokenize(source), chain, keep)
    assert all(s.text for s in segs) and all((s.edit is None) == (s.kind == "same") for s in segs)
    assert "".join(s.text for s in segs if s.kind in ("same", "del", "off")) == source
    assert "".join(s.text for s in segs if s.kind in ("same", "ins", "off")) == apply_subset(source, chain, keep)
    assert [s.edit for s in segs if s.edit is not None] == sorted(s.edit for s in segs if s.edit is not None)
