"""Compiled edit-distance DP with arbitrary positive costs (numba, cached on disk).

One call aligns a whole batch of pairs, so Python's per-call overhead is paid once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Op codes shared with edits.py: 1 replace, 2 delete, 3 insert (matches are not recorded).


@njit(cache=True, nogil=True)
def dp_many(a, a_off, b, b_off, ci, cd, cr):  # pragma: no cover - compiled
    """Minimum-cost chains for the pairs ``a[a_off[p]:a_off[p+1]] -> b[b_off[p]:b_off[p+1]]``.

    Returns span records (pair, op, i0, i1, j0, j1) in source order, neighbouring single-token
    ops of the same kind already merged: source span [i0, i1) becomes target span [j0, j1).
    A common prefix and suffix are matched first (always optimal with zero-cost matches).
    Among minimum-cost chains the one with fewest single-token ops wins; remaining ties prefer, walking back from the end: match, insert, delete, replace, so that in source
    order a changed block reads replaces, then deletes, then inserts (as the C extension).
    """
    npairs = a_off.shape[0] - 1
    maxn, maxm = 0, 0
    for p in range(npairs):
        maxn = max(maxn, a_off[p + 1] - a_off[p])
        maxm = max(maxm, b_off[p + 1] - b_off[p])
    moves = np.empty((maxn + 1, maxm + 1), np.uint8)  # bit 1: diagonal, 2: delete, 4: insert
    costs = np.empty((2, maxm + 1))  # the DP's previous and current row
    counts = np.empty((2, maxm + 1), np.int64)  # their op counts, the tie-breaker
    top = np.empty((3, maxn + maxm), np.int64)  # the ops walking back: op, i, j
    out = np.empty((a.shape[0] + b.shape[0], 6), np.int64)
    r = 0
    for p in range(npairs):
        A = a[a_off[p] : a_off[p + 1]]
        B = b[b_off[p] : b_off[p + 1]]
        n, m = A.shape[0], B.shape[0]
        s = 0
        while s < n and s < m and A[s] == B[s]:
            s += 1
        e = 0
        while e < n - s and e < m - s and A[n - 1 - e] == B[m - 1 - e]:
            e += 1
        _fill_moves(A[s : n - e], B[s : m - e], ci, cd, cr, moves, costs, counts)
        k = _walk_back(A[s : n - e], B[s : m - e], moves, top)
        r = _write_spans(out, r, p, s, top, k)
    return out[:r].copy()


@njit(cache=True, nogil=True)
def _fill_moves(A, B, ci, cd, cr, moves, costs, counts):  # pragma: no cover - compiled
    """The lexicographic DP (minimum cost, then fewest single-token operations) of ``A -> B``:
    ``moves[i, j]`` gets the bits of every best last move into cell (i, j)."""
    n2, m2 = A.shape[0], B.shape[0]
    prev, cur = costs[0], costs[1]
    nprev, ncur = counts[0], counts[1]
    prev[0] = 0.0
    nprev[0] = 0
    for j in range(1, m2 + 1):
        prev[j] = j * ci
        nprev[j] = j
        moves[0, j] = 4
    for i in range(1, n2 + 1):
        cur[0] = i * cd
        ncur[0] = i
        moves[i, 0] = 2
        ai = A[i - 1]
        for j in range(1, m2 + 1):
            eq = ai == B[j - 1]
            c0 = prev[j - 1] + (0.0 if eq else cr)
            c1 = prev[j] + cd
            c2 = cur[j - 1] + ci
            k0 = nprev[j - 1] + (0 if eq else 1)
            k1 = nprev[j] + 1
            k2 = ncur[j - 1] + 1
            best = min(c0, c1, c2)
            tol = 1e-9 * max(1.0, best)  # float costs: treat near-equal sums as ties
            fewest = 1 << 62
            if c0 <= best + tol:
                fewest = min(fewest, k0)
            if c1 <= best + tol:
                fewest = min(fewest, k1)
            if c2 <= best + tol:
                fewest = min(fewest, k2)
            mv = 0
            if c0 <= best + tol and k0 == fewest:
                mv |= 1
            if c1 <= best + tol and k1 == fewest:
                mv |= 2
            if c2 <= best + tol and k2 == fewest:
                mv |= 4
            moves[i, j] = mv
            cur[j] = best
            ncur[j] = fewest
        prev, cur = cur, prev
        nprev, ncur = ncur, nprev


@njit(cache=True, nogil=True)
def _walk_back(A, B, moves, top):  # pragma: no cover - compiled
    """Follow ``moves`` back from the last cell, preferring match, insert, delete, replace;
    ``top`` gets the single-token ops (op, i, j) from the end. Returns how many."""
    k = 0
    i, j = A.shape[0], B.shape[0]
    while i > 0 or j > 0:
        mv = moves[i, j]
        if (mv & 1) and i > 0 and j > 0 and A[i - 1] == B[j - 1]:
            i -= 1
            j -= 1
            continue
        if (mv & 4) and j > 0:
            top[0, k], top[1, k], top[2, k] = 3, i, j - 1
            j -= 1
        elif (mv & 2) and i > 0:
            top[0, k], top[1, k], top[2, k] = 2, i - 1, j
            i -= 1
        else:
            top[0, k], top[1, k], top[2, k] = 1, i - 1, j - 1
            i -= 1
            j -= 1
        k += 1
    return k


@njit(cache=True, nogil=True)
def _write_spans(out, r, p, s, top, k):  # pragma: no cover - compiled
    """Pair ``p``'s ``k`` ops (``top``, from the end; positions after the common prefix ``s``) as
    span records from row ``r`` of ``out``, runs of one kind that continue each other merged.
    Returns the next free row."""
    open_rec = False
    for t in range(k - 1, -1, -1):
        op, i, j = top[0, t], top[1, t] + s, top[2, t] + s
        if open_rec and out[r, 1] == op and out[r, 3] == i:
            if op != 3:
                out[r, 3] = i + 1
            if op != 2:
                out[r, 5] = j + 1
            continue
        if open_rec:
            r += 1
        out[r, 0], out[r, 1], out[r, 2] = p, op, i
        out[r, 3] = i if op == 3 else i + 1
        out[r, 4] = j
        out[r, 5] = j if op == 2 else j + 1
        open_rec = True
    return r + 1 if open_rec else r
