"""Chains of edits: minimum-cost inference, application, and the compact forms a model writes
(readable lines, one per edit, are in ``readable``).

A chain is a list of :class:`Edit` records in source order. ``infer_edits`` finds a
minimum-cost chain under configurable insert / delete / replace costs (the paper's
"different preferences on editing"); ``apply_edits`` turns a source back into the target.
The DP runs in a small C extension (``_cdp.c``), or in numba without it (the same chains: which
of several minimum-cost chains is written must not depend on whether a compiler was at hand,
since training data is built from them). This module never imports torch.
"""

from __future__ import annotations

import functools
import gc
import itertools
import math
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from rapidfuzz.distance import Indel, Levenshtein

from secondthoughts._dp import dp_many

try:  # the C extension; absent when the package was installed without a compiler
    from secondthoughts import _cdp
except ImportError:  # pragma: no cover - exercised only on such installs
    _cdp = None

Op = Literal["insert", "delete", "replace"]
Costs = tuple[float, float, float]  # (insert, delete, replace)

DEFAULT_COSTS: Costs = (1.0, 1.0, 2.0)
# Cost sets for augmentation: the paper infers several chains per pair this way.
# (1, 1, 3) never replaces, (1, 1, 1) always prefers replacing.
DEFAULT_COST_SETS: tuple[Costs, ...] = ((1, 1, 2), (1, 1, 3), (1, 1, 1))


class EditError(ValueError):
    """A chain that does not fit its source, or a rendering that cannot be parsed."""


class Edit(NamedTuple):
    """One span edit. ``start`` indexes the source; inserts go before ``source[start]``.

    A plain named tuple, so that building millions of them stays cheap; ``check`` validates
    one made by hand (``apply_edits`` and the parsers call it).
    """

    op: Op
    start: int
    old: tuple[Hashable, ...] = ()
    new: tuple[Hashable, ...] = ()

    @property
    def end(self) -> int:
        return self.start + len(self.old)

    def check(self) -> Edit:
        if self.op not in ("insert", "delete", "replace"):
            raise EditError(f"unknown edit op {self.op!r}")
        if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start < 0:
            raise EditError(f"{self.op} start must be a non-negative int, got {self.start!r}")
        if not isinstance(self.old, tuple) or not isinstance(self.new, tuple):
            raise EditError(f"{self.op} at {self.start}: old and new must be tuples of tokens")
        needs_old, needs_new = {"insert": (False, True), "delete": (True, False), "replace": (True, True)}[self.op]
        if bool(self.old) != needs_old or bool(self.new) != needs_new:
            raise EditError(
                f"{self.op} at {self.start}: old must be {'non-empty' if needs_old else 'empty'} "
                f"and new {'non-empty' if needs_new else 'empty'} (old={self.old!r}, new={self.new!r})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "start": self.start, "old": list(self.old), "new": list(self.new)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        try:
            return cls(d["op"], d["start"], tuple(d.get("old", ())), tuple(d.get("new", ()))).check()
        except KeyError as e:
            raise EditError(f"edit {d!r} lacks field {e.args[0]!r}") from None


if _cdp is not None:
    _cdp.set_edit_type(Edit)

# ---------------------------------------------------------------- inference

# Up to this many DP cells the compiled DP is used (C, else numba: they write the same chain);
# above it, rapidfuzz's linear-memory alignment where it is provably optimal, with or without C.
_C_MAX_CELLS = 1 << 20


@functools.lru_cache(maxsize=256)
def _check_costs(costs: tuple[float, ...]) -> Costs:
    if len(costs) != 3:
        raise ValueError(f"costs must be (insert, delete, replace), got {costs!r}")
    ci, cd, cr = (float(c) for c in costs)
    if not all(c > 0 and math.isfinite(c) for c in (ci, cd, cr)):
        raise ValueError(f"costs must be positive finite numbers, got {costs!r}")
    return ci, cd, cr


_new = tuple.__new__  # builds an Edit without NamedTuple's Python-level __new__


def _blocks(opcodes: list[tuple[str, int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Merge rapidfuzz opcodes into maximal blocks of non-matching tokens (i0, i1, j0, j1)."""
    blocks: list[tuple[int, int, int, int]] = []
    prev_equal = True
    for tag, i0, i1, j0, j1 in opcodes:
        if tag == "equal":
            prev_equal = True
        elif prev_equal:
            blocks.append((i0, i1, j0, j1))
            prev_equal = False
        else:
            blocks[-1] = (blocks[-1][0], i1, blocks[-1][2], j1)
    return blocks


def _rapidfuzz_chain(a: tuple, b: tuple, costs: Costs) -> list[Edit] | None:
    """A chain from rapidfuzz's C alignment where it is provably minimum-cost, else None.

    Each block of non-matching tokens (x source, y target tokens) becomes min(x, y) replaces,
    then deletes or inserts. Optimal when:
    - costs are uniform: a unit-cost Levenshtein alignment is optimal at any scale;
    - replace >= insert + delete: replacing never helps, so a longest common subsequence
      (Indel) alignment is optimal;
    - otherwise, when an LCS alignment's blocks all lean the same way (x >= y in every block,
      or x <= y in every block). For any alignment with M matches, cost >=
      (n-M)*del + (m-M)*ins - min(n-M, m-M)*(ins+del-rep), which decreases with M <= LCS;
      such an expansion attains that bound at M = LCS.
    """
    ci, cd, cr = costs
    if ci == cd == cr:
        blocks, use_replace = _blocks(Levenshtein.opcodes(a, b).as_list()), True
    else:
        blocks = _blocks(Indel.opcodes(a, b).as_list())
        use_replace = cr <= ci + cd
        if cr < ci + cd:
            leans = {(i1 - i0 > j1 - j0) - (i1 - i0 < j1 - j0) for i0, i1, j0, j1 in blocks}
            if 1 in leans and -1 in leans:
                return None
    edits: list[Edit] = []
    for i0, i1, j0, j1 in blocks:
        k = min(i1 - i0, j1 - j0) if use_replace else 0
        if k:
            edits.append(_new(Edit, ("replace", i0, a[i0 : i0 + k], b[j0 : j0 + k])))
        if i1 - i0 > k:
            edits.append(_new(Edit, ("delete", i0 + k, a[i0 + k : i1], ())))
        if j1 - j0 > k:
            edits.append(_new(Edit, ("insert", i1, (), b[j0 + k : j1])))
    return edits


_OP_NAMES: tuple[Op, ...] = ("replace", "replace", "delete", "insert")  # index = op code from _dp


def _token_ids(seqs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 ids for all sequences plus offsets.

    Strings are identified by their 64-bit hash (a C-speed map; a collision between two
    distinct tokens of one pair has probability ~1e-17). Other tokens get exact ids.
    """
    flat = list(itertools.chain.from_iterable(seqs))
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in seqs], out=off[1:])
    try:
        "".join(flat)  # TypeError unless every token is a str
        ids = np.fromiter(map(hash, flat), dtype=np.int64, count=len(flat))
    except TypeError:
        table: dict[Hashable, int] = {}
        ids = np.fromiter((table.setdefault(t, len(table)) for t in flat), dtype=np.int64, count=len(flat))
    return ids, off


def _large(a: tuple, b: tuple) -> bool:
    return len(a) * len(b) > _C_MAX_CELLS


def _infer(a: tuple, b: tuple, costs: Costs) -> list[Edit]:
    chain = _rapidfuzz_chain(a, b, costs) if _large(a, b) else None
    if chain is not None:
        return chain
    return _cdp.infer(a, b, *costs) if _cdp is not None else _dp_chains([(a, b)], costs)[0]


def infer_edits_many(
    pairs: Iterable[tuple[Sequence[Hashable], Sequence[Hashable]]],
    insert_cost: float = 1,
    delete_cost: float = 1,
    replace_cost: float = 2,
) -> list[list[Edit]]:
    """``infer_edits`` for many pairs. Without the C extension, the pairs go to the numba DP in
    one call, so that its dispatch cost is paid once."""
    costs = _check_costs((insert_cost, delete_cost, replace_cost))
    tpairs = [(a if type(a) is tuple else tuple(a), b if type(b) is tuple else tuple(b)) for a, b in pairs]
    # Millions of small acyclic tuples would otherwise trigger repeated full GC passes over
    # everything already kept: that doubled the time on Moral Stories.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if _cdp is not None:
            return [_infer(a, b, costs) for a, b in tpairs]
        chains = [_rapidfuzz_chain(a, b, costs) if _large(a, b) else None for a, b in tpairs]
        rest = [n for n, c in enumerate(chains) if c is None]
        if rest:
            for n, chain in zip(rest, _dp_chains([tpairs[n] for n in rest], costs)):
                chains[n] = chain
        return chains  # type: ignore[return-value]
    finally:
        if gc_was_enabled:
            gc.enable()


def _dp_chains(tpairs: list[tuple[tuple, tuple]], costs: Costs) -> list[list[Edit]]:
    n = len(tpairs)
    if not n:
        return []
    ids, off = _token_ids([p[0] for p in tpairs] + [p[1] for p in tpairs])
    recs = dp_many(ids[: off[n]], off[: n + 1], ids[off[n] :], off[n:] - off[n], *costs)
    chains: list[list[Edit]] = [[] for _ in range(n)]
    for p, op, i0, i1, j0, j1 in recs.tolist():
        a, b = tpairs[p]
        chains[p].append(_new(Edit, (_OP_NAMES[op], i0, a[i0:i1], b[j0:j1])))
    return chains


def infer_edits(
    source: Sequence[Hashable],
    target: Sequence[Hashable],
    insert_cost: float = 1,
    delete_cost: float = 1,
    replace_cost: float = 2,
) -> list[Edit]:
    """A minimum-cost chain of edits that turns ``source`` into ``target``.

    Tokens may be any hashable values and costs any positive numbers. Neighbouring
    single-token operations of one kind are merged into span edits. Ties are broken
    deterministically: fewest single-token operations first (a replace rather than a delete
    plus an insert of equal cost), then, within a changed block, replaces come first, then
    deletes, then inserts. Above about a million DP cells, where rapidfuzz's alignment is
    provably minimum-cost it is used instead, and only the cost is guaranteed.
    """
    return _infer(tuple(source), tuple(target), _check_costs((insert_cost, delete_cost, replace_cost)))


def chain_cost(edits: Iterable[Edit], insert_cost: float = 1, delete_cost: float = 1, replace_cost: float = 2) -> float:
    """Sum of per-token operation costs. A replace of unequal spans counts min(a, b)
    replaces plus the extra tokens as inserts or deletes."""
    total = 0.0
    for e in edits:
        a, b = len(e.old), len(e.new)
        k = min(a, b)
        total += k * replace_cost + (a - k) * delete_cost + (b - k) * insert_cost
    return total


def apply_edits(source: Sequence[Hashable], edits: Iterable[Edit]) -> list[Hashable]:
    """Apply a chain in source order; refuse overlaps, out-of-range spans and stale ``old``."""
    src = list(source)
    out: list[Hashable] = []
    cursor = 0
    for n, e in enumerate(edits):
        e.check()
        if e.start < cursor:
            raise EditError(f"edit {n} ({e.op} at {e.start}) overlaps or precedes the previous edit (ends at {cursor})")
        if e.end > len(src) or e.start > len(src):
            raise EditError(f"edit {n} ({e.op} at {e.start}..{e.end}) runs past the end of the source ({len(src)} tokens)")
        if tuple(src[e.start : e.end]) != e.old:
            raise EditError(
                f"edit {n} ({e.op} at {e.start}) expects {list(e.old)!r} but the source has {src[e.start:e.end]!r}"
            )
        out.extend(src[cursor : e.start])
        out.extend(e.new)
        cursor = e.end
    out.extend(src[cursor:])
    return out


def merge_close_edits(source: Sequence[Hashable], edits: Iterable[Edit], gap: int) -> list[Edit]:
    """The chain with every run of edits that at most ``gap`` kept tokens separate made one replace
    (its old span from the first edit's start to the last one's end, its new text the edits' new
    text with the kept tokens between them): fewer, longer edits, which apply to the same target.
    A minimum-cost chain aligns any word the two texts share (" the", " her"), so where a text is
    mostly rewritten its chain is many small edits around such words."""
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    out: list[Edit] = []
    for e in edits:
        if out and e.start - out[-1].end <= gap:
            p = out[-1]
            old, new = tuple(source[p.start : e.end]), p.new + tuple(source[p.end : e.start]) + e.new
            out[-1] = Edit("replace" if old and new else "delete" if old else "insert", p.start, old, new)
        else:
            out.append(e)
    return [e for e in out if e.old != e.new]


def augment_chains(
    source: Sequence[Hashable],
    target: Sequence[Hashable],
    cost_sets: Iterable[Sequence[float]] = DEFAULT_COST_SETS,
    merge_gap: int | None = None,
) -> list[tuple[Costs, list[Edit]]]:
    """The distinct chains that the given cost sets infer for one pair, first-seen order; with
    ``merge_gap``, each after ``merge_close_edits`` (so fewer may be distinct)."""
    seen: set[tuple[Edit, ...]] = set()
    out: list[tuple[Costs, list[Edit]]] = []
    for costs in cost_sets:
        c = _check_costs(tuple(costs))
        chain = infer_edits(source, target, *c)
        if merge_gap is not None:
            chain = merge_close_edits(source, chain, merge_gap)
        key = tuple(chain)
        if key not in seen:
            seen.add(key)
            out.append((c, chain))
    return out


# ---------------------------------------------------------------- text tokens

# Each token is a word (letters/digits, inner apostrophes) or one other character, with the
# whitespace before it attached; trailing whitespace is a token of its own. Joining the tokens
# gives back the exact string.
_TOKEN_RE = re.compile(r"\s*(?:\w+(?:['’]\w+)*|[^\w\s])|\s+")


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def detokenize(tokens: Iterable[str]) -> str:
    return "".join(tokens)


def infer_text_edits(source: str, target: str, costs: Sequence[float] = DEFAULT_COSTS) -> list[Edit]:
    return infer_edits(tokenize(source), tokenize(target), *costs)


def apply_text_edits(source: str, edits: Iterable[Edit]) -> str:
    return detokenize(apply_edits(tokenize(source), edits))  # type: ignore[arg-type]


# ---------------------------------------------------------------- compact rendering

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
    pieces: list[tuple[str, int]] = []  # (marker or text, char offset)
    pos = 0
    for m in _SPECIAL_RE.finditer(text):
        if m.start() > pos:
            pieces.append((text[pos : m.start()], pos))
        pieces.append((m.group(), m.start()))
        pos = m.end()
    if pos < len(text):
        pieces.append((text[pos:], pos))

    edits: list[Edit] = []
    k = 0

    def fail(msg: str, offset: int) -> EditError:
        return EditError(f"compact chain, edit {len(edits)} at character {offset}: {msg}")

    def content(marker: str) -> str:
        nonlocal k
        if k >= len(pieces) or pieces[k][0] != marker:
            got = pieces[k][0] if k < len(pieces) else "end of text"
            raise fail(f"expected {marker}, got {got!r}", pieces[k][1] if k < len(pieces) else len(text))
        k += 1
        if k >= len(pieces) or pieces[k][0] in MARKERS:
            raise fail(f"empty content after {marker}", pieces[k - 1][1])
        k += 1
        try:
            return unescape(pieces[k - 1][0])
        except EditError as e:
            raise fail(str(e), pieces[k - 1][1]) from None

    cursor, kept = 0, False  # inline: where the next edit stands; whether kept text led there
    while k < len(pieces):
        piece, off = pieces[k]
        if piece == EOC:
            if k != len(pieces) - 1:
                raise fail(f"text after {EOC}: {pieces[k + 1][0]!r}", pieces[k + 1][1])
            return edits
        if inline and piece == KEEP and not kept:
            span = tokenize(content(KEEP))
            if tokens[cursor : cursor + len(span)] != span:  # type: ignore[index]
                raise fail(f"kept text {detokenize(span)!r} is not the source's text from token {cursor}", off)
            cursor, kept = cursor + len(span), True
            continue
        if piece not in _MARK_OP:
            raise fail(f"expected an edit marker{f', {KEEP}' if inline and not kept else ''} or {EOC}, got {piece!r}", off)
        op = _MARK_OP[piece]
        k += 1
        if inline:
            edits.append(_inline_edit(op, cursor, kept, edits, tokens, content, fail, off))  # type: ignore[arg-type]
            cursor, kept = edits[-1].end, False
            continue
        start: int | None = None
        if k < len(pieces) and re.fullmatch(r"\d+", pieces[k][0]):
            start = int(pieces[k][0])
            k += 1
        elif op == "insert" and k < len(pieces) and pieces[k][0] == NEW:
            prev = edits[-1] if edits else None
            if prev is not None and not insert_here(prev.op):
                raise fail(f"{INS}{NEW} (right where the previous edit ends) cannot follow an insert", off)
            start = prev.end if prev else 0
        elif k < len(pieces) and pieces[k][0] != OLD:
            raise fail(f"{piece} must be followed by a position or {OLD}" + (f" or {NEW}" if op == "insert" else ""), off)
        anchor = tokenize(content(OLD)) if op == "insert" and start is None else []
        old = tokenize(content(OLD)) if op != "insert" else []
        new = tokenize(content(NEW)) if op != "delete" else []
        if start is None:
            if tokens is None:
                raise fail(f"{piece} without a position: reading it needs the source", off)
            prev = edits[-1] if edits else None
            lo = lowest_start(op, prev.end, prev.op) if prev else 0
            start = resolve_anchor(tokens, op, anchor or old, lo)
            if start is None:
                raise fail(f"{detokenize(anchor or old)!r} does not occur in the source after token {lo}", off)
        edits.append(Edit(op, start, tuple(old), tuple(new)).check())
    if require_end:
        raise EditError(f"compact chain ends without {EOC} after {len(edits)} edits")
    return edits


def _inline_edit(op: Op, cursor: int, kept: bool, edits: list[Edit], tokens: list[str], content: Any, fail: Any, off: int) -> Edit:
    """One edit of an inline chain, its marker read: it stands at ``cursor``."""
    prev = "" if kept or not edits else edits[-1].op
    if lowest_start(op, cursor, prev) > cursor:
        raise fail(f"{op} right after {prev}: an edit there needs kept text before it ({KEEP})", off)
    old = tokenize(content(OLD)) if op != "insert" else []
    if old and tokens[cursor : cursor + len(old)] != old:
        raise fail(f"{detokenize(old)!r} is not the source's text from token {cursor}", off)
    new = tokenize(content(NEW)) if op != "delete" else []
    return Edit(op, cursor, tuple(old), tuple(new)).check()
