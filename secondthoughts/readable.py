"""Chains of edits as readable lines, one per edit, and back: ``replace "hits" with "talks to"``,
``delete "very"``, ``insert "kindly" after "asks"`` / ``insert "Please," at start``, with
``at token N`` only where the quoted text occurs more than once. What the CLI, the web editor and
reports show, and what a person writes to correct an edit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from secondthoughts.chain_text import EOC, MARKERS, find_span, parse_compact
from secondthoughts.edits import (
    Edit,
    EditError,
    apply_edits,
    apply_text_edits,
    detokenize,
    tokenize,
)

_STR = r'"(?:[^"\\]|\\.)*"'
_LINE_RE = re.compile(
    rf"^\s*(?:(?P<rep>replace)\s+(?P<rold>{_STR})\s+with\s+(?P<rnew>{_STR})"
    rf"|(?P<del>delete)\s+(?P<dold>{_STR})"
    rf"|(?P<ins>insert)\s+(?P<inew>{_STR})\s+(?:after\s+(?P<anchor>{_STR})|(?P<atstart>at\s+start)))"
    rf"(?:\s+at\s+token\s+(?P<at>\d+))?\s*$"
)


def _q(text: str) -> str:
    # JSON escapes control characters; these three also break lines for str.splitlines.
    return re.sub("[\x85\u2028\u2029]", lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))




def _find_loose(tokens: list[str], text: str, lo: int) -> tuple[int, str] | None:
    """Where ``text`` matches the source, ignoring the whitespace before its first token.
    Returns (position, that whitespace)."""
    span = tokenize(text)
    if not span:
        return None
    p = find_span(tokens, span, lo)
    if p is not None:
        return p, ""
    if text[:1].isspace():
        return None
    for p in range(max(lo, 0), len(tokens) - len(span) + 1):
        first = tokens[p]
        ws = first[: len(first) - len(first.lstrip())]
        if ws and first[len(ws) :] == span[0] and tokens[p + 1 : p + len(span)] == span[1:]:
            return p, ws
    return None


def _parse_line(line: str, tokens: list[str], cursor: int, lineno: int) -> Edit:
    m = _LINE_RE.match(line)
    if not m:
        raise EditError(
            f"readable chain, line {lineno}: cannot read {line!r}; expected "
            '`replace "old" with "new"`, `delete "old"`, `insert "new" after "word"` or `insert "new" at start`'
        )
    at = int(m["at"]) if m["at"] is not None else None

    def s(group: str) -> str:
        return json.loads(m[group])

    def locate(text: str, lo: int) -> tuple[int, str]:
        if at is not None:  # a pinned line is exact: no whitespace filled in
            if find_span(tokens, tokenize(text), at) != at:
                raise EditError(f"readable chain, line {lineno}: {text!r} is not at token {at} of the source")
            return at, ""
        found = _find_loose(tokens, text, lo)
        if found is None:
            raise EditError(f"readable chain, line {lineno}: {text!r} not found in the source after token {lo}")
        return found

    if m["rep"] or m["del"]:
        old_text = s("rold") if m["rep"] else s("dold")
        n_old = len(tokenize(old_text))
        if not n_old:  # a pinned line would otherwise "find" empty text anywhere
            raise EditError(f"readable chain, line {lineno}: {'replace' if m['rep'] else 'delete'} of empty text; quote the words to change")
        p, ws = locate(old_text, cursor)
        old = tokens[p : p + n_old]
        if m["del"]:
            return Edit("delete", p, tuple(old))
        new_text = s("rnew")
        if not new_text:  # an edit that removes text is a delete: say so rather than build an invalid replace
            raise EditError(f"readable chain, line {lineno}: replace with empty text; write `delete {m['rold']}`")
        if ws and not new_text[:1].isspace():
            new_text = ws + new_text  # keep the space the replaced word had
        return Edit("replace", p, tuple(old), tuple(tokenize(new_text)))
    new_text = s("inew")
    if m["atstart"]:
        if at not in (None, 0):
            raise EditError(f"readable chain, line {lineno}: 'at start' contradicts 'at token {at}'")
        p = 0
    else:
        anchor = s("anchor")
        n = len(tokenize(anchor))
        p = locate(anchor, cursor - 1)[0] + n if at is None else at
        if at is not None and (at < n or find_span(tokens, tokenize(anchor), at - n) != at - n):
            raise EditError(f"readable chain, line {lineno}: {anchor!r} does not end right before token {at}")
    if at is None and p > 0 and re.match(r"\w", new_text):
        new_text = " " + new_text  # a word inserted after a word needs its space
    if not new_text:
        raise EditError(f"readable chain, line {lineno}: insert of empty text")
    return Edit("insert", p, (), tuple(tokenize(new_text)))


def parse_readable(text: str, source: str | Sequence[str]) -> list[Edit]:
    """Parse readable lines back to edits, anchored in the source text.

    Lines are read in source order: each edit is looked up after the previous one. Quoted
    text may leave out the space before a word: it is taken from the source. A line that
    ends in ``at token N`` is exact: its text is used as quoted, at that position.
    """
    tokens = tokenize(source) if isinstance(source, str) else list(source)
    edits: list[Edit] = []
    cursor = 0
    for lineno, line in enumerate(re.split(r"\r?\n", text), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        e = _parse_line(line, tokens, cursor, lineno)
        if e.start < cursor:
            raise EditError(f"readable chain, line {lineno}: edit at token {e.start} overlaps the previous edit")
        edits.append(e)
        cursor = e.end
    return edits


def _render_line(e: Edit, tokens: list[str], cursor: int, loose: bool) -> str:
    def show(span: Sequence[Any]) -> str:
        t = detokenize(span)
        return t.lstrip() if loose and t.strip() else t

    if e.op == "replace":
        line = f"replace {_q(show(e.old))} with {_q(show(e.new))}"
    elif e.op == "delete":
        line = f"delete {_q(show(e.old))}"
    elif e.start == 0:
        line = f"insert {_q(show(e.new))} at start"
    else:
        line = f"insert {_q(show(e.new))} after {_q(show(tokens[e.start - 1 : e.start]))}"
    return line


def render_readable(edits: Iterable[Edit], source: str | Sequence[str]) -> str:
    """One line per edit, e.g. ``replace "hits" with "talks to"``.

    Each line uses the friendliest form (spaces left out, no position) that parses back to
    exactly the same edit, falling back to exact quoting and ``at token N``.
    """
    tokens = tokenize(source) if isinstance(source, str) else list(source)
    lines: list[str] = []
    cursor = 0
    for n, e in enumerate(edits):
        for loose, pinned in ((True, False), (False, False), (False, True)):
            line = _render_line(e, tokens, cursor, loose)
            if pinned:
                line += f" at token {e.start}"
            try:
                if _parse_line(line, tokens, cursor, n + 1) == e:
                    break
            except EditError:
                continue
        else:
            raise EditError(f"edit {n} ({e.op} at {e.start}) does not fit the source")
        lines.append(line)
        cursor = e.end
    return "\n".join(lines)


# ---------------------------------------------------------------- chains given by people

# A chain as people give it: a compact string, readable lines, or Edit records (or their dicts).
ChainLike = str | Sequence[Edit]


def as_chain(chain: ChainLike, source: str, *, what: str = "chain") -> tuple[list[Edit], bool]:
    """(edits, closed) from a compact string, readable lines or ``Edit`` records, checked
    against ``source``. ``closed``: a compact string that ends with ``<|eoc|>``."""
    closed = False
    if isinstance(chain, str):
        text = chain.strip()
        try:
            if any(m in text for m in MARKERS):
                closed = text.endswith(EOC)
                edits = parse_compact(text, source, require_end=False)
            else:
                edits = parse_readable(text, source)
        except EditError as e:
            raise EditError(f"{what} cannot be read: {e}") from None
    else:
        edits = [e if isinstance(e, Edit) else Edit.from_dict(e) for e in chain]  # type: ignore[arg-type]
    try:
        apply_edits(tokenize(source), edits)
    except EditError as e:
        raise EditError(f"{what} does not apply to the source: {e}") from None
    return edits, closed


def apply_subset(source: str, chain: ChainLike, keep: Sequence[bool]) -> str:
    """The source with only the chosen edits of a chain applied (``keep[i]`` for edit ``i``).

    Any subset of a valid chain applies: its edits are in source order and never overlap.
    """
    edits, _ = as_chain(chain, source)
    if len(keep) != len(edits):
        raise ValueError(f"keep has {len(keep)} flags for a chain of {len(edits)} edits")
    return apply_text_edits(source, [e for e, k in zip(edits, keep) if k])
