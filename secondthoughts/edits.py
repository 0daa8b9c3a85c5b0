"""Chains of edits: minimum-cost inference and application (the text forms a model writes are in
``chain_text``, readable lines, one per edit, in ``readable``).

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


def parse_cost_sets(text: str) -> list[list[float]]:
    """``"1,1,2;1,1,3"`` -> ``[[1, 1, 2], [1, 1, 3]]`` (the ``--cost-sets`` flag and its ``--config``
    value); ValueError naming the text where a set is not three positive finite numbers."""
    try:
        sets = [[float(x) for x in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise ValueError(f"cost sets look like '1,1,2;1,1,3', got {text!r}") from None
    if not sets or any(len(s) != 3 for s in sets):
        raise ValueError(f"each cost set is insert,delete,replace; got {text!r}")
    if not all(c > 0 and math.isfinite(c) for s in sets for c in s):
        raise ValueError(f"costs must be positive finite numbers, got {text!r}")
    return sets


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


def realigned_text(source: str, chain: Iterable[Edit]) -> str:
    """A model's chain applied to its source; a chain that leaves no word (an empty text, or only
    punctuation such as ".") is an error, since deleting the act without replacing it is no
    re-alignment (and best-of would count it as a changed candidate)."""
    text = apply_text_edits(source, chain)
    if not any(c.isalnum() for c in text):
        raise EditError("the chain deletes every word")
    return text
