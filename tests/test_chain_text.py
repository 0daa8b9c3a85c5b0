"""secondthoughts.chain_text: the compact forms a model writes (positional, anchored, inline), as
training sees them, and parse errors that say what and where."""

from __future__ import annotations

import re

import pytest

from secondthoughts.chain_text import (
    parse_chain,
    parse_compact,
    render_chain,
    render_compact,
    render_inline,
)
from secondthoughts.edits import (
    Edit,
    EditError,
    apply_text_edits,
    infer_text_edits,
)


def test_compact_form_is_what_training_sees():
    src, tgt = "He hits the dog.", "He pets the <|dog|>."
    chain = infer_text_edits(src, tgt)
    assert render_compact(chain) == "<|rep|>1<|old|> hits<|new|> pets<|rep|>3<|old|> dog<|new|> <\\|dog|><|eoc|>" or apply_text_edits(
        src, parse_compact(render_compact(chain))
    ) == tgt
    assert render_compact([]) == "<|eoc|>" and parse_compact("<|eoc|>") == []


def test_anchored_compact_copies_spans_instead_of_counting():
    src = "He hits the dog and the cat."
    chain = infer_text_edits(src, "He pets the dog and a big cat now.")
    text = render_compact(chain, src)
    # " the" first occurs at 2, but a replace after a replace starts past a kept token: at 5
    # "big" goes right where the second replace ends: no anchor, nothing copied from text already taken
    assert text == "<|rep|><|old|> hits<|new|> pets<|rep|><|old|> the<|new|> a<|ins|><|new|> big<|ins|><|old|> cat<|new|> now<|eoc|>"
    assert parse_compact(text, src) == chain
    # The same chain as written before <|ins|><|new|> (anchored by the replaced " the") still reads the same.
    assert parse_compact(text.replace("<|ins|><|new|> big", "<|ins|><|old|> the<|new|> big"), src) == chain
    assert render_compact([Edit("insert", 0, (), ("Oh", ","))], src) == "<|ins|><|new|>Oh,<|eoc|>"  # the start, where no token anchors
    assert parse_compact("<|ins|><|new|>Oh,<|eoc|>", src) == [Edit("insert", 0, (), ("Oh", ","))]
    with pytest.raises(EditError, match="cannot follow an insert"):
        parse_compact("<|ins|><|new|>Oh,<|ins|><|new|> so<|eoc|>", src)
    assert render_compact([Edit("delete", 5, (" the",))], src) == "<|del|>5<|old|> the<|eoc|>"  # " the" alone finds 2
    assert parse_compact("<|del|><|old|> the dog<|ins|><|old|> cat<|new|>!<|eoc|>", src) == [
        Edit("delete", 2, (" the", " dog")), Edit("insert", 7, (), ("!",))
    ]
    with pytest.raises(EditError, match="' the dog' does not occur in the source after token 5"):
        parse_compact("<|del|><|old|> the dog<|del|><|old|> the dog<|eoc|>", src)


def test_inline_chains_write_the_kept_text_and_stand_where_it_ends():
    src = "He hits the dog and the cat."
    chain = infer_text_edits(src, "He pets the dog and a big cat now.")
    text = render_inline(chain, src)
    assert text == "<|keep|>He<|rep|><|old|> hits<|new|> pets<|keep|> the dog and<|rep|><|old|> the<|new|> a<|ins|><|new|> big<|keep|> cat<|ins|><|new|> now<|eoc|>"
    assert parse_chain(text, src, "inline") == chain and render_chain(chain, src, "inline") == text
    assert parse_chain("<|keep|>He hits the dog and the cat.<|eoc|>", src, "inline") == []  # kept text at the end is allowed
    bad = {
        # what the anchored form looks up after the cursor, inline reads right at it
        "<|keep|>He<|del|><|old|> the<|eoc|>": "' the' is not the source's text from token 1",
        "<|keep|> He<|eoc|>": "kept text ' He' is not the source's text from token 0",
        # reaching back into text an edit already took
        "<|keep|>He<|rep|><|old|> hits the<|new|> pets<|del|><|old|> the<|eoc|>": "' the' is not the source's text from token 3",
        "<|del|><|old|>He<|rep|><|old|> hits<|new|> x<|eoc|>": "replace right after delete: an edit there needs kept text",
        "<|ins|><|new|> Oh<|ins|><|new|> so<|eoc|>": "insert right after insert",
        "<|keep|>He<|keep|> hits<|eoc|>": "expected an edit marker or <|eoc|>, got '<|keep|>'",
        "<|del|>1<|old|> hits<|eoc|>": "expected <|old|>, got '1'",
        "<|ins|><|old|>He<|new|> x<|eoc|>": "expected <|new|>, got '<|old|>'",
    }
    for chain_text, message in bad.items():
        with pytest.raises(EditError, match=re.escape(message)):
            parse_chain(chain_text, src, "inline")
    with pytest.raises(EditError, match="against its source"):
        parse_compact("<|keep|>He<|eoc|>")
    with pytest.raises(ValueError, match="chain_format"):
        render_chain(chain, src, "numbered")


@pytest.mark.parametrize(
    "text, message",
    [
        ("<|rep|>1<|old|> a", r"expected <\|new\|>, got 'end of text'"),
        ("<|rep|>1<|old|> a<|new|> b", "ends without"),
        ("<|rep|><|old|> a<|new|> b<|eoc|>", "needs the source"),
        ("<|rep|><|new|> b<|eoc|>", "followed by a position or"),
        ("<|ins|><|del|>", r"followed by a position or <\|old\|> or <\|new\|>"),
        ("<|rep|>x<|old|> a<|new|> b<|eoc|>", "followed by a position"),
        ("<|del|>1<|new|> a<|eoc|>", r"expected <\|old\|>"),
        ("<|ins|>1<|new|><|eoc|>", "empty content"),
        ("<|eoc|>junk", "text after"),
        ("junk<|eoc|>", "expected an edit marker"),
        ("<|ins|>1<|new|> a\\x<|eoc|>", "bad escape"),
    ],
)
def test_malformed_compact_says_what_and_where(text, message):
    with pytest.raises(EditError, match=message) as info:
        parse_compact(text)
    assert re.search(r"character \d+|ends without", str(info.value))
