"""Chains of edits as the text a model writes, and back: the compact forms (``positional``:
every edit with its source position; ``anchored``: positions only where the span does not say
where; ``inline``: the kept source text written between edits) and their parsing, which checks a
chain against its source. The records themselves, their inference and application: ``edits``.
This module never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from secondthoughts.edits import Edit, EditError, Op, detokenize, tokenize

# The linearized form used in training sequences. Each edit: op marker, source position,
# then its content; the chain ends with EOC.
INS, DEL, REP, OLD, NEW, EOC = "<|ins|>", "<|del|>", "<|rep|>", "<|old|>", "<|new|>", "<|eoc|>"
SPECIAL_TOKENS: tuple[str, ...] = (INS, DEL, REP, OLD, NEW, EOC)
# Inline chains also write the source text kept between edits, after this marker. Apart from the
# markers every format writes: runs trained before inline chains have no such token.
KEEP = "<|keep|>"
MARKERS: tuple[str, ...] = (*SPECIAL_TOKENS, KEEP)
_OP_MARK = {"insert": INS, "delete": DEL, "replace": REP}
_MARK_OP = {v: k for k, v in _OP_MARK.items()}
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in MARKERS))


def escape(text: str) -> str:
    """Make user text unable to contain a special token: every marker starts with ``<|``."""
    return text.replace("\\", "\\\\").replace("<|", "<\\|")


def unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\|":
                raise EditError(f"bad escape at character {i} of {text!r}")
            out.append(text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# Canonical order inside one changed block (``infer_edits``): a replace, then a delete, then an
# insert, each where the previous one ends. Any other edit starts after a kept token.
_RANK = {"replace": 0, "delete": 1, "insert": 2}


# How a compact chain locates its edits (``render_chain``): by the text they copy, by position, or
# by writing the kept source text between them.
CHAIN_FORMATS: tuple[str, ...] = ("anchored", "positional", "inline")


def lowest_start(op: str, cursor: int, prev: str) -> int:
    """The lowest position an ``op`` may take after an edit ``prev`` that ends at ``cursor``, in
    the order ``infer_edits`` writes chains. Edits written without a position are looked up from here."""
    return cursor if not prev or _RANK[op] > _RANK[prev] else cursor + 1


def insert_here(prev: str) -> bool:
    """Whether an insert may stand right where the previous edit ``prev`` ends (anchored chains
    write it ``<|ins|><|new|> text``, with no anchor): at a chain's start and after a delete or
    replace, not after another insert (two inserts at one place are one insert)."""
    return prev != "insert"


def find_span(tokens: list[str], span: list[str], lo: int) -> int | None:
    """Where ``span`` first occurs in ``tokens`` at or after ``lo`` (None: nowhere)."""
    n = len(span)
    for p in range(max(lo, 0), len(tokens) - n + 1):
        if tokens[p : p + n] == span:
            return p
    return None


def resolve_anchor(tokens: Sequence[Any], op: str, span: Sequence[Any], lo: int) -> int | None:
    """Where an edit written without its position lands: a delete or replace at the first
    occurrence of its span at or after ``lo``; an insert right after the first occurrence of its
    anchor (the text before it) that ends at or after ``lo``. None if there is none."""
    tokens, span = list(tokens), list(span)
    if op == "insert":
        a = find_span(tokens, span, max(lo - len(span), 0))
        return None if a is None else a + len(span)
    return find_span(tokens, span, lo)


def _anchors(tokens: Sequence[Any], e: Edit, lo: int) -> bool:
    """Whether ``e`` may be written with an anchor instead of its position (its span, or for an
    insert the one token before it, finds it)."""
    if e.op == "insert":
        return e.start > 0 and resolve_anchor(tokens, "insert", tokens[e.start - 1 : e.start], lo) == e.start
    return resolve_anchor(tokens, e.op, e.old, lo) == e.start


def render_compact(edits: Iterable[Edit], source: str | Sequence[str] | None = None, *, end: bool = True) -> str:
    """The compact form. With the ``source``, anchored: an edit leaves out its position when its
    span (a delete or replace: ``<|del|><|old|> span``) or the token before it (an insert:
    ``<|ins|><|old|> word<|new|> text``) first occurs, after the previous edit, right where it is;
    so a model copies text instead of counting tokens. An insert right where the previous edit
    ends (or at the start) is ``<|ins|><|new|> text``: no anchor, so that what follows ``<|old|>``
    is always text no edit has taken yet. Without the source, every edit has its position."""
    tokens = None if source is None else (tokenize(source) if isinstance(source, str) else list(source))
    parts: list[str] = []
    cursor, prev = 0, ""
    for e in edits:
        here = tokens is not None and e.op == "insert" and e.start == cursor and insert_here(prev)
        anchored = here or (tokens is not None and _anchors(tokens, e, lowest_start(e.op, cursor, prev)))
        parts.append(_OP_MARK[e.op] + ("" if anchored else str(e.start)))
        if anchored and e.op == "insert" and not here:
            parts.append(OLD + escape(detokenize(tokens[e.start - 1 : e.start])))  # type: ignore[index]
        if e.old:
            parts.append(OLD + escape(detokenize(e.old)))  # type: ignore[arg-type]
        if e.new:
            parts.append(NEW + escape(detokenize(e.new)))  # type: ignore[arg-type]
        cursor, prev = e.end, e.op
    if end:
        parts.append(EOC)
    return "".join(parts)


def render_inline(edits: Iterable[Edit], source: str | Sequence[str], *, end: bool = True) -> str:
    """The inline form: the source text before each edit, up to where the previous one ended, is
    written out after ``<|keep|>``, and each edit stands exactly there, without position or anchor
    (``<|del|><|old|> span``, ``<|rep|><|old|> span<|new|> text``, ``<|ins|><|new|> text``); the
    text after the last edit is left out. A model continues copying its source instead of
    looking up where an edit lands, so an edit cannot reach back into text already passed."""
    tokens = tokenize(source) if isinstance(source, str) else list(source)
    parts: list[str] = []
    cursor = 0
    for e in edits:
        if e.start < cursor or e.end > len(tokens):
            raise EditError(f"{e.op} at {e.start}..{e.end} does not fit a chain in source order over {len(tokens)} tokens")
        if e.start > cursor:
            parts.append(KEEP + escape(detokenize(tokens[cursor : e.start])))
        parts.append(_OP_MARK[e.op])
        if e.old:
            parts.append(OLD + escape(detokenize(e.old)))  # type: ignore[arg-type]
        if e.new:
            parts.append(NEW + escape(detokenize(e.new)))  # type: ignore[arg-type]
        cursor = e.end
    if end:
        parts.append(EOC)
    return "".join(parts)


def render_chain(edits: Iterable[Edit], source: str | Sequence[str], chain_format: str, *, end: bool = True) -> str:
    """A chain as a model trained on ``chain_format`` (one of ``CHAIN_FORMATS``) writes it."""
    if chain_format == "inline":
        return render_inline(edits, source, end=end)
    if chain_format not in CHAIN_FORMATS:
        raise ValueError(f"chain_format must be one of {CHAIN_FORMATS}, got {chain_format!r}")
    return render_compact(edits, source if chain_format == "anchored" else None, end=end)


def parse_chain(text: str, source: str | Sequence[str], chain_format: str, *, require_end: bool = True) -> list[Edit]:
    """Read a chain written in ``chain_format``; inline chains are read strictly as inline (an edit
    stands exactly where the kept text ends), the other two as ``parse_compact`` reads them."""
    if chain_format not in CHAIN_FORMATS:
        raise ValueError(f"chain_format must be one of {CHAIN_FORMATS}, got {chain_format!r}")
    return parse_compact(text, source, require_end=require_end, inline=chain_format == "inline")


def parse_compact(
    text: str, source: str | Sequence[str] | None = None, *, require_end: bool = True, inline: bool | None = None
) -> list[Edit]:
    """Parse the compact form; errors name the character offset and edit number. Edits written
    without a position are looked up in ``source`` (see ``render_compact``). An insert anchored by
    the last token of the edit before it is read too (chains written before ``<|ins|><|new|>``).
    ``inline``: read ``render_inline``'s form (no positions or anchors; each edit right where the
    kept text or the previous edit ends); None: inline if the text has a ``<|keep|>``."""
    tokens = None if source is None else (tokenize(source) if isinstance(source, str) else list(source))
    if inline is None:
        inline = KEEP in text
    if inline and tokens is None:
        raise EditError("an inline chain is read against its source: none given")
    r = _ChainReader(text, tokens)
    cursor, kept = 0, False  # inline: where the next edit stands; whether kept text led there
    while r.k < len(r.pieces):
        piece, off = r.pieces[r.k]
        if piece == EOC:
            if r.k != len(r.pieces) - 1:
                raise r.fail(f"text after {EOC}: {r.pieces[r.k + 1][0]!r}", r.pieces[r.k + 1][1])
            return r.edits
        if inline and piece == KEEP and not kept:
            cursor, kept = r.kept_text(cursor, off), True
            continue
        if piece not in _MARK_OP:
            raise r.fail(f"expected an edit marker{f', {KEEP}' if inline and not kept else ''} or {EOC}, got {piece!r}", off)
        op = _MARK_OP[piece]
        r.k += 1
        if inline:
            r.edits.append(r.inline_edit(op, cursor, kept, off))
            cursor, kept = r.edits[-1].end, False
        else:
            r.edits.append(r.placed_edit(piece, op, off))
    if require_end:
        raise EditError(f"compact chain ends without {EOC} after {len(r.edits)} edits")
    return r.edits


class _ChainReader:
    """Reading one compact chain: its pieces (markers and the text between them, each with its
    character offset), the next piece ``k``, the edits read so far and the source's tokens."""

    def __init__(self, text: str, tokens: list[str] | None):
        self.text, self.tokens, self.k = text, tokens, 0
        self.edits: list[Edit] = []
        self.pieces: list[tuple[str, int]] = []  # (marker or text, char offset)
        pos = 0
        for m in _SPECIAL_RE.finditer(text):
            if m.start() > pos:
                self.pieces.append((text[pos : m.start()], pos))
            self.pieces.append((m.group(), m.start()))
            pos = m.end()
        if pos < len(text):
            self.pieces.append((text[pos:], pos))

    def fail(self, msg: str, offset: int) -> EditError:
        return EditError(f"compact chain, edit {len(self.edits)} at character {offset}: {msg}")

    def content(self, marker: str) -> str:
        """The text after ``marker``, which must be the next piece; both are read."""
        pieces, k = self.pieces, self.k
        if k >= len(pieces) or pieces[k][0] != marker:
            got = pieces[k][0] if k < len(pieces) else "end of text"
            raise self.fail(f"expected {marker}, got {got!r}", pieces[k][1] if k < len(pieces) else len(self.text))
        if k + 1 >= len(pieces) or pieces[k + 1][0] in MARKERS:
            raise self.fail(f"empty content after {marker}", pieces[k][1])
        self.k = k + 2
        try:
            return unescape(pieces[k + 1][0])
        except EditError as e:
            raise self.fail(str(e), pieces[k + 1][1]) from None

    def kept_text(self, cursor: int, off: int) -> int:
        """An inline chain's kept text (its ``<|keep|>`` next), checked against the source at
        ``cursor``; returns where the next edit stands."""
        span = tokenize(self.content(KEEP))
        if self.tokens[cursor : cursor + len(span)] != span:  # type: ignore[index]
            raise self.fail(f"kept text {detokenize(span)!r} is not the source's text from token {cursor}", off)
        return cursor + len(span)

    def inline_edit(self, op: Op, cursor: int, kept: bool, off: int) -> Edit:
        """One edit of an inline chain, its marker read: it stands at ``cursor``."""
        prev = "" if kept or not self.edits else self.edits[-1].op
        if lowest_start(op, cursor, prev) > cursor:
            raise self.fail(f"{op} right after {prev}: an edit there needs kept text before it ({KEEP})", off)
        old = tokenize(self.content(OLD)) if op != "insert" else []
        if old and self.tokens[cursor : cursor + len(old)] != old:  # type: ignore[index]
            raise self.fail(f"{detokenize(old)!r} is not the source's text from token {cursor}", off)
        new = tokenize(self.content(NEW)) if op != "delete" else []
        return Edit(op, cursor, tuple(old), tuple(new)).check()

    def placed_edit(self, marker: str, op: Op, off: int) -> Edit:
        """One edit of a positional or anchored chain, its marker read: at the position written
        after it, right where the previous edit ends (``<|ins|><|new|>``), or where its anchor (an
        insert's) or old text (a delete's or replace's) first occurs after the previous edit."""
        pieces, edits = self.pieces, self.edits
        start: int | None = None
        if self.k < len(pieces) and re.fullmatch(r"\d+", pieces[self.k][0]):
            start = int(pieces[self.k][0])
            self.k += 1
        elif op == "insert" and self.k < len(pieces) and pieces[self.k][0] == NEW:
            prev = edits[-1] if edits else None
            if prev is not None and not insert_here(prev.op):
                raise self.fail(f"{INS}{NEW} (right where the previous edit ends) cannot follow an insert", off)
            start = prev.end if prev else 0
        elif self.k < len(pieces) and pieces[self.k][0] != OLD:
            raise self.fail(f"{marker} must be followed by a position or {OLD}" + (f" or {NEW}" if op == "insert" else ""), off)
        anchor = tokenize(self.content(OLD)) if op == "insert" and start is None else []
        old = tokenize(self.content(OLD)) if op != "insert" else []
        new = tokenize(self.content(NEW)) if op != "delete" else []
        if start is None:
            if self.tokens is None:
                raise self.fail(f"{marker} without a position: reading it needs the source", off)
            prev = edits[-1] if edits else None
            lo = lowest_start(op, prev.end, prev.op) if prev else 0
            start = resolve_anchor(self.tokens, op, anchor or old, lo)
            if start is None:
                raise self.fail(f"{detokenize(anchor or old)!r} does not occur in the source after token {lo}", off)
        return Edit(op, start, tuple(old), tuple(new)).check()
