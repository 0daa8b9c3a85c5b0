"""Edit-consistent decoding: a logits processor that lets a model write only chains of edits
that parse and apply to their source.

The grammar (``chain_text.render_compact``), checked token by token on the bytes generated so far::

    chain := edit* <|eoc|>
    edit  := <|ins|> POS <|new|> TEXT | <|del|> POS <|old|> SPAN | <|rep|> POS <|old|> SPAN <|new|> TEXT
           | <|ins|> <|old|> ANCHOR <|new|> TEXT | <|del|> <|old|> SPAN | <|rep|> <|old|> SPAN <|new|> TEXT
           | <|ins|> <|new|> TEXT

- Each edit starts after the previous one as ``infer_edits`` writes chains: right where it ends
  only for a delete or insert after a replace, or an insert after a delete (one changed block);
  otherwise past at least one kept token (``edits.lowest_start``). So a model cannot write two
  inserts at one place or split a replace in two.
- Without ``POS`` (anchored), a ``SPAN`` is the escaped source text of some tokens from there on
  and the edit lands at its first occurrence (``edits.resolve_anchor``); an insert's ``ANCHOR`` is
  the one source token right before it, never one the previous edit took: an insert right where
  that edit ends (or at the start) is ``<|ins|> <|new|> TEXT`` (``edits.insert_here``).
- ``POS`` is a decimal source-token index (no leading zeros), below the source length for a
  delete or replace, up to it for an insert, and only where the anchored form would not find the
  edit (the renderer writes positions only there); its ``SPAN`` is then exactly the escaped source
  text from ``POS`` to an edit-token boundary, at least one token long (so ``parse_compact`` reads
  back the source tokens themselves).
- ``TEXT`` is any non-empty text as ``chain_text.escape`` writes it (no ``<|``; a backslash only
  before a backslash, or before ``|`` after ``<``), ending on a whole UTF-8 character. So the
  chain is in canonical form: ``render_compact(parse_compact(chain, source), source) == chain``.
- Markers are only the special-token ids; a text token can never spell one.

Inline chains (``chain_text.render_inline``) write the kept source text instead of positions or anchors::

    chain := (<|keep|> SPAN)? (edit (<|keep|> SPAN)?)* <|eoc|>      (no <|keep|> right before <|eoc|>)
    edit  := <|ins|> <|new|> TEXT | <|del|> <|old|> SPAN | <|rep|> <|old|> SPAN <|new|> TEXT

where every ``SPAN`` is the source text from where the chain has got to, and two edits stand
together only as ``infer_edits`` writes one changed block (``edits.lowest_start``).

At each step the allowed set is computed exactly (not by probing the top candidates): it is small
after a marker, inside a position or a span (looked up by byte prefix), and inside free text it is a
precomputed vocabulary mask with two adjustments. So the processor works the same under greedy
search, sampling (it runs before temperature / top-p, which transformers appends after user
processors) and beam search, for batched rows (each row's state comes from its own ids) and for
prompt-lookup drafting (which calls processors on drafted prefixes).

Each row's state is a pure function of its generated ids: cached by id prefix, so a step costs
one advance per row. A chain cut by ``max_new_tokens`` is still a prefix of a valid chain;
:attr:`ChainState.closable_at` says where to cut it so that ``<|eoc|>`` closes it (see
``Realigner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from transformers import LogitsProcessor

from secondthoughts.chain_text import (
    CHAIN_FORMATS,
    KEEP,
    escape,
    insert_here,
    lowest_start,
    resolve_anchor,
)
from secondthoughts.edit_vocab import EditVocab, scan_text
from secondthoughts.edits import detokenize, tokenize

# Phases of a chain being written.
OP, POS, SPAN, TEXT, DONE, BAD = range(6)
_PHASE_NAMES = ("OP", "POS", "SPAN", "TEXT", "DONE", "BAD")


class ChainState(NamedTuple):
    """Where a row is in the grammar.

    ``op``: the edit being written ("" between edits, "keep" in an inline chain's kept text);
    ``prev``: the previous edit's op ("keep" right after kept text);
    ``cursor``: the end of the previous edit (OP, POS) or the end of the current edit (SPAN once
    closed, TEXT); ``lo``: the lowest position the current edit may take; ``pos``: the current
    edit's position (-1 while an anchored span is being written); ``cands``: the positions an
    anchored span still matches; ``buf``: bytes of the current field (position digits, span or
    text); ``n``: tokens consumed; ``closable_at``: tokens consumed at the last point where
    ``<|eoc|>`` could have followed.
    """

    phase: int
    op: str = ""
    cursor: int = 0
    prev: str = ""
    pos: int = -1
    buf: bytes = b""
    n: int = 0
    closable_at: int = 0
    lo: int = 0
    cands: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"{_PHASE_NAMES[self.phase]}(op={self.op or '-'}, cursor={self.cursor}, lo={self.lo}, pos={self.pos}, buf={self.buf!r})"


def start_state(cursor: int = 0, closed: bool = False, prev: str = "") -> ChainState:
    """The state before the first generated token: after a forced prefix whose last edit (op
    ``prev``) ends at ``cursor`` and which, with ``closed``, already ends with ``<|eoc|>``."""
    return ChainState(DONE if closed else OP, cursor=cursor, prev=prev)


# ---------------------------------------------------------------- sources


class SourceIndex:
    """A source's edit tokens and, per position, the escaped text a span may copy, for chains in
    ``chain_format`` (``chain_text.render_chain``): "anchored" (positions only where needed),
    "positional" (every edit with its position, as models trained before anchoring) or "inline"
    (the kept text written out: every span stands where the chain has got to)."""

    def __init__(self, source: str, chain_format: str = "anchored"):
        if chain_format not in CHAIN_FORMATS:
            raise ValueError(f"chain_format must be one of {CHAIN_FORMATS}, got {chain_format!r}")
        self.chain_format = chain_format
        self.anchored, self.inline = chain_format == "anchored", chain_format == "inline"
        self.tokens = tokenize(source)
        self.n = len(self.tokens)
        self._spans: dict[int, tuple[bytes, dict[int, int]]] = {}
        self._memo: dict[tuple[Any, ...], Any] = {}

    def span(self, pos: int) -> tuple[bytes, dict[int, int]]:
        """(escaped bytes of tokens[pos:], {byte length of an escaped span: its end token})."""
        if pos not in self._spans:
            # escape() is prefix-monotone: the escaped text of tokens[pos:k] is a prefix of that of
            # tokens[pos:], so one string serves every end. Its length is the UTF-8 length plus
            # one byte per backslash and per "<|" (escape() adds ASCII only).
            full = escape(detokenize(self.tokens[pos:])).encode()
            ends: dict[int, int] = {}
            size, last = 0, ""
            for k in range(pos + 1, self.n + 1):  # one pass: anchored spans ask for every position
                t = self.tokens[k - 1]
                size += len(t.encode()) + t.count("\\") + t.count("<|") + (last.endswith("<") and t.startswith("|"))
                ends[size] = k
                last = t
            self._spans[pos] = (full, ends)
        return self._spans[pos]

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def here(self, op: str, prev: str) -> bool:
        """Whether an ``op`` after ``prev`` may be written ``<|ins|><|new|>``: at ``lo``, right where ``prev`` ends."""
        return self.anchored and op == "insert" and insert_here(prev)

    def positions(self, op: str, lo: int, here: bool = False) -> tuple[str, ...]:
        """The positions (as digits) an ``op`` may write from ``lo``: those the anchored form would
        not find. A delete or replace at ``p`` needs its first token earlier in [lo, p) (else no
        span from ``p`` has an earlier occurrence); an insert at ``p`` needs an anchor that misses
        it, and with ``here`` (see ``here``) not to stand at ``lo``."""

        def make() -> tuple[str, ...]:
            t, hi = self.tokens, self.n + 1 if op == "insert" else self.n
            if self.inline:
                return ()
            if not self.anchored:
                ps = list(range(lo, hi))
            elif op == "insert":
                ps = [p for p in range(lo + here, hi) if p == 0 or resolve_anchor(t, "insert", t[p - 1 : p], lo) != p]
            else:
                ps = [p for p in range(lo, hi) if t[p] in t[lo:p]]
            return tuple(map(str, ps))

        return self._cached(("positions", op, lo, here), make)

    def anchors(self, op: str, lo: int, here: bool = False) -> tuple[int, ...]:
        """Where an anchored span may start: any position from ``lo``; for an insert's one-token
        anchor, any token that ends at ``lo`` or later, except with ``here``: then the token before
        ``lo`` belongs to the previous edit, and neither it nor a later copy of it (which would
        find it first) anchors."""
        if not self.anchored:
            return ()
        if op != "insert":
            return tuple(range(lo, self.n))
        if not here or lo == 0:
            return tuple(range(max(lo - 1, 0), self.n))
        t = self.tokens
        return self._cached(("anchors", lo), lambda: tuple(p for p in range(lo, self.n) if t[p] != t[lo - 1]))

    def span_limit(self, pos: int, lo: int) -> int:
        """Bytes a span written at position ``pos`` may take: while its tokens also occur earlier
        in [lo, pos), so that the positional form stays the canonical one (see ``positions``)."""

        def make() -> int:
            full, ends = self.span(pos)
            if not self.anchored:
                return len(full)
            t, best = self.tokens, 0
            for nbytes, end in ends.items():
                if resolve_anchor(t, "delete", t[pos:end], lo) == pos:
                    break
                best = nbytes
            return best

        return self._cached(("limit", pos, lo), make)

    def one_token(self, pos: int) -> int:
        """Byte length of the escaped token at ``pos``."""
        return self._cached(("one", pos), lambda: min(self.span(pos)[1]))


def _digits_ok(digits: str, positions: tuple[str, ...]) -> bool:
    """Whether ``digits`` starts some allowed position (decimal, so no leading zeros)."""
    return any(p.startswith(digits) for p in positions)


def _text_closable(buf: bytes) -> bool:
    ctx = scan_text(buf)
    if not buf or ctx is None or ctx[0]:  # empty, invalid, or a backslash pending
        return False
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- the grammar


def _viable(op: str, lo: int, src: SourceIndex, here: bool) -> bool:
    return here or bool(src.positions(op, lo, here) or src.anchors(op, lo, here))


def _inline_ops(cursor: int, prev: str, n: int) -> list[str]:
    """The edits an inline chain may write at ``cursor`` after ``prev``: right there, so only
    those that continue a changed block as ``infer_edits`` writes it (anything after kept text)."""
    after = "" if prev == "keep" else prev
    return [op for op in ("replace", "delete", "insert") if lowest_start(op, cursor, after) == cursor and (op == "insert" or cursor < n)]


def _inline_marker_step(state: ChainState, tid: int, voc: EditVocab, src: SourceIndex, n: int) -> ChainState:
    # Which markers may stand here is _next_markers' call alone: this only says where each leads.
    if tid not in _next_markers(state.cursor, state.prev, voc, src):
        return ChainState(BAD, n=n, closable_at=state.closable_at)
    closable = state.closable_at if state.prev == "keep" else n - 1  # <|eoc|> never follows kept text
    if tid == voc.eoc:
        return ChainState(DONE, cursor=state.cursor, prev=state.prev, n=n, closable_at=n - 1)
    if tid == voc.keep:
        return ChainState(SPAN, "keep", state.cursor, state.prev, pos=state.cursor, n=n, closable_at=closable, lo=state.cursor)
    return ChainState(POS, voc.op_markers[tid], state.cursor, state.prev, n=n, closable_at=closable, lo=state.cursor)


def _marker_step(state: ChainState, tid: int, voc: EditVocab, src: SourceIndex, n: int) -> ChainState:
    """A marker where a new edit (or the end) may start after the edit ``state.prev`` that ends at
    ``state.cursor``."""
    if src.inline:
        return _inline_marker_step(state, tid, voc, src, n)
    if tid == voc.eoc:
        return ChainState(DONE, cursor=state.cursor, prev=state.prev, n=n, closable_at=n - 1)
    op = voc.op_markers.get(tid)
    lo = lowest_start(op, state.cursor, state.prev) if op else 0
    if op is None or not _viable(op, lo, src, src.here(op, state.prev)):
        return ChainState(BAD, n=n, closable_at=state.closable_at)
    return ChainState(POS, op, state.cursor, state.prev, n=n, closable_at=n - 1, lo=lo)


def _span_view(state: ChainState, src: SourceIndex) -> list[tuple[int, bytes, dict[int, int]]]:
    """(position, the bytes its span may take, its token ends) for every position the span being
    written may still stand at: one when written with a position, the candidates when anchored.
    Each of these bytes starts with ``state.buf`` (``advance`` keeps only such positions)."""
    if state.pos >= 0:
        full, ends = src.span(state.pos)
        return [(state.pos, full[: src.span_limit(state.pos, state.lo)], ends)]
    out = []
    for p in state.cands:
        full, ends = src.span(p)
        out.append((p, full[: src.one_token(p)] if state.op == "insert" else full, ends))
    return out


def _span_close(op: str, nbytes: int, view: list[tuple[int, bytes, dict[int, int]]]) -> tuple[int, int] | None:
    """(position, end token) if a span of ``nbytes`` written so far may end here: the first
    position of ``view`` (``_span_view``, those still matching) where it ends on a token boundary
    (an insert's anchor: one token)."""
    for p, _, ends in view:
        end = ends.get(nbytes)
        if end is not None and (op != "insert" or end == p + 1):
            return p, end
    return None


def advance(state: ChainState, tid: int, voc: EditVocab, src: SourceIndex) -> ChainState:
    """The state after one more token; phase BAD if the token breaks the grammar."""
    n = state.n + 1
    piece = voc.pieces[tid] if tid < len(voc.pieces) else None
    phase = state.phase
    if phase in (DONE, BAD):
        return state._replace(n=n)
    if phase == OP:
        return _marker_step(state, tid, voc, src, n)
    bad = ChainState(BAD, n=n, closable_at=state.closable_at)
    if phase == POS and src.inline:  # no position: the edit stands at lo, its content follows
        if state.op == "insert":
            return state._replace(phase=TEXT, cursor=state.lo, pos=state.lo, n=n) if tid == voc.new else bad
        return state._replace(phase=SPAN, pos=state.lo, n=n) if tid == voc.old else bad
    if phase == POS:
        digits = state.buf.decode()
        here = src.here(state.op, state.prev)
        allowed_pos = src.positions(state.op, state.lo, here)
        if piece is not None:
            if piece.isdigit() and _digits_ok(digits + piece.decode(), allowed_pos):
                return state._replace(buf=state.buf + piece, n=n)
            return bad
        if not digits and here and tid == voc.new:  # an insert right where the previous edit ends
            return state._replace(phase=TEXT, cursor=state.lo, pos=state.lo, buf=b"", n=n)
        if not digits:  # anchored: <|old|> starts the span (or an insert's anchor)
            cands = src.anchors(state.op, state.lo, here)
            return state._replace(phase=SPAN, pos=-1, cands=cands, n=n) if tid == voc.old and cands else bad
        follow = voc.new if state.op == "insert" else voc.old
        if tid == follow and digits in allowed_pos:
            p = int(digits)
            return state._replace(phase=TEXT if state.op == "insert" else SPAN, cursor=p, pos=p, buf=b"", n=n)
        return bad
    if phase == SPAN:
        if piece is not None:
            buf = state.buf + piece
            view = [v for v in _span_view(state, src) if v[1].startswith(buf)]
            if not view:
                return bad
            nxt = state._replace(buf=buf, n=n, cands=tuple(p for p, _, _ in view) if state.pos < 0 else ())
            if state.op == "delete" and _span_close("delete", len(buf), view):
                nxt = nxt._replace(closable_at=n)
            return nxt
        close = _span_close(state.op, len(state.buf), _span_view(state, src))
        if close is None:
            return bad
        p, end = close
        if state.op == "insert":  # the anchor ends right before the insert
            return ChainState(TEXT, "insert", end, state.prev, end, b"", n, state.closable_at, state.lo) if tid == voc.new else bad
        if state.op == "replace":
            return ChainState(TEXT, "replace", end, state.prev, p, b"", n, state.closable_at, state.lo) if tid == voc.new else bad
        return _marker_step(ChainState(OP, cursor=end, prev=state.op, closable_at=state.closable_at), tid, voc, src, n)
    # TEXT
    if piece is not None:
        buf = state.buf + piece
        if scan_text(buf) is None:
            return bad
        return state._replace(buf=buf, n=n, closable_at=n if _text_closable(buf) else state.closable_at)
    if _text_closable(state.buf):
        return _marker_step(ChainState(OP, cursor=state.cursor, prev=state.op, closable_at=state.closable_at), tid, voc, src, n)
    return bad


def walk(ids: Sequence[int], voc: EditVocab, src: SourceIndex, start: ChainState | None = None) -> ChainState:
    """The state after ``ids`` (generated tokens) from ``start``."""
    state = start or start_state()
    for t in ids:
        state = advance(state, t, voc, src)
    return state


def _next_markers(cursor: int, prev: str, voc: EditVocab, src: SourceIndex) -> list[int]:
    if src.inline:
        here = _inline_ops(cursor, prev, src.n)
        ops = [m for m, op in voc.op_markers.items() if op in here]
        if prev == "keep":
            return ops
        return [*ops, *([voc.keep] if voc.keep is not None and cursor < src.n else []), voc.eoc]
    ops = [m for m, op in voc.op_markers.items() if _viable(op, lowest_start(op, cursor, prev), src, src.here(op, prev))]
    return [*ops, voc.eoc]


def _replaces_with_itself(state: ChainState, src: SourceIndex) -> bool:
    """A replace whose new text so far equals its old span: closing it would write a no-op edit
    (which ``infer_edits`` never writes), so the text must go on."""
    if state.op != "replace":
        return False
    full, ends = src.span(state.pos)
    return len(state.buf) in ends and ends[len(state.buf)] == state.cursor and full[: len(state.buf)] == state.buf


def allowed(state: ChainState, voc: EditVocab, src: SourceIndex, then: str) -> list[int] | torch.Tensor | None:
    """The tokens that keep the chain valid: a list of ids, a vocabulary mask, or None (all)."""
    parts = allowed_parts(state, voc, src, then)
    if parts is None:
        return None
    base, ids = parts
    if base is None:
        return ids
    mask = base.clone()
    if ids:
        mask[ids] = True
    return mask


def allowed_parts(state: ChainState, voc: EditVocab, src: SourceIndex, then: str) -> tuple[torch.Tensor | None, list[int]] | None:
    """``allowed`` as (a shared vocabulary mask or None, ids allowed besides it); None: all.
    The mask is one of ``voc``'s precomputed ones (never to be written to), so storing the sets
    of many positions costs a few ids each, not a vocabulary row."""
    phase = state.phase
    if phase == OP:
        return None, _next_markers(state.cursor, state.prev, voc, src)
    if phase == POS and src.inline:
        return None, [voc.new if state.op == "insert" else voc.old]
    if phase == POS:
        digits = state.buf.decode()
        here = src.here(state.op, state.prev)
        positions = src.positions(state.op, state.lo, here)
        ids = [i for i in voc.digit_ids if _digits_ok(digits + voc.pieces[i].decode(), positions)]  # type: ignore[union-attr]
        if not digits:
            ids += [voc.old] * bool(src.anchors(state.op, state.lo, here)) + [voc.new] * here
        elif digits in positions:
            ids.append(voc.new if state.op == "insert" else voc.old)
        return None, ids
    if phase == SPAN:
        ids = set()
        view = _span_view(state, src)
        for _, full, _ in view:
            rest = full[len(state.buf) :]
            ids.update(i for k in range(1, min(voc.max_piece, len(rest)) + 1) for i in voc.by_bytes.get(rest[:k], ()))
        close = _span_close(state.op, len(state.buf), view)
        out = sorted(ids)
        if close is not None:
            out += [voc.new] if state.op in ("replace", "insert") else _next_markers(close[1], state.op, voc, src)
        return None, out
    if phase == TEXT:
        ctx = scan_text(state.buf)
        base = voc.text_ok[ctx] if ctx is not None else torch.zeros_like(voc.text_mask)
        markers = _next_markers(state.cursor, state.op, voc, src) if _text_closable(state.buf) and not _replaces_with_itself(state, src) else []
        return base, markers
    if phase == DONE and then == "target":
        # The target after the chain: plain text and the end of the sequence, no markers.
        return voc.text_mask, [voc.eos] if voc.eos is not None else []
    if phase == DONE and voc.eos is not None:
        # Ended: a row that generated <|eoc|> is padded by generate whatever we allow; a row
        # whose forced prefix was the whole chain must stop at once.
        return None, [voc.eos]
    return None  # never under constraint: a broken row


class ChainConstraint(LogitsProcessor):
    """Masks every token that would make a row's chain fail to parse or apply to its source.

    ``sources``: one per input (rows are inputs repeated ``rows // len(sources)`` times, as
    ``generate`` expands them for beams). ``prompt_len``: width of the (left-padded) prompt, a
    forced prefix included; ``starts``: each input's state after that prefix. ``then``: "stop"
    when ``<|eoc|>`` ends generation (apply mode), "target" when a target follows (generate mode).
    ``chain_format``: the format the model was trained on (see ``SourceIndex``).
    """

    def __init__(
        self,
        voc: EditVocab,
        sources: Sequence[str],
        prompt_len: int,
        *,
        starts: Sequence[ChainState] | None = None,
        then: Literal["stop", "target"] = "stop",
        chain_format: str = "anchored",
    ):
        self.voc = voc
        self.sources = [SourceIndex(s, chain_format) for s in sources]
        if self.sources and self.sources[0].inline and voc.keep is None:
            raise ValueError(f"inline chains need the {KEEP} token, which this tokenizer lacks")
        self.prompt_len = prompt_len
        self.starts = list(starts) if starts is not None else [start_state()] * len(sources)
        if len(self.starts) != len(self.sources):
            raise ValueError(f"{len(self.starts)} start states for {len(self.sources)} sources")
        self.then = then
        self._cache: dict[tuple[int, tuple[int, ...]], ChainState] = {}

    def state(self, item: int, gen: Sequence[int]) -> ChainState:
        """The state of input ``item`` after generated ids ``gen``."""
        key = (item, tuple(gen))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        prev = self._cache.get((item, key[1][:-1])) if gen else None
        src = self.sources[item]
        if prev is not None:
            state = advance(prev, gen[-1], self.voc, src)
        else:
            state = walk(gen, self.voc, src, self.starts[item])
        if len(self._cache) > 100_000:  # old steps are never asked again
            self._cache.clear()
        self._cache[key] = state
        return state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        per = max(rows // len(self.sources), 1)
        gen = input_ids[:, self.prompt_len :].tolist()
        allow = torch.zeros((rows, vocab), dtype=torch.bool)
        masked = False
        for r in range(rows):
            item = min(r // per, len(self.sources) - 1)
            a = allowed(self.state(item, gen[r]), self.voc, self.sources[item], self.then)
            masked |= a is not None
            _fill(allow[r], a)
        if not masked:
            return scores
        return scores.masked_fill(~allow.to(scores.device), -float("inf"))


def _fill(row: torch.Tensor, a: list[int] | torch.Tensor | None) -> None:
    """Set the allowed entries of a (vocabulary-wide, all False) row; ``None`` allows all."""
    if a is None:
        row[:] = True
    elif isinstance(a, torch.Tensor):
        k = min(len(a), len(row))
        row[:k] = a[:k]
    else:
        row[[i for i in a if i < len(row)]] = True
