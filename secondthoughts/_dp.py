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
    Ties prefer, walking back from the end: match, insert, delete, replace, so that in source
    order a changed block reads replaces, then deletes, then inserts (as the rapidfuzz path).
    """
    npairs = a_off.shape[0] - 1
    maxn, maxm = 0, 0
    for p in range(npairs):
        maxn = max(maxn, a_off[p + 1] - a_off[p])
        maxm = max(maxm, b_off[p + 1] - b_off[p])
    moves = np.empty((maxn + 1, maxm + 1), np.uint8)  # bit 1: diagonal, 2: delete, 4: insert
    prev = np.empty(maxm + 1)
    cur = np.empty(maxm + 1)
    top_op = np.empty(maxn + maxm, np.int8)
    top_i = np.empty(maxn + maxm, np.int64)
    top_j = np.empty(maxn + maxm, np.int64)
    cap = a.shape[0] + b.shape[0]
    out = np.empty((cap, 6), np.int64)
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
        n2, m2 = n - s - e, m - s - e
        prev[0] = 0.0
        for j in range(1, m2 + 1):
            prev[j] = j * ci
            moves[0, j] = 4
        for i in range(1, n2 + 1):
            cur[0] = i * cd
            moves[i, 0] = 2
            ai = A[s + i - 1]
            for j in range(1, m2 + 1):
                diag = prev[j - 1] + (0.0 if ai == B[s + j - 1] else cr)
                dl = prev[j] + cd
                ins = cur[j - 1] + ci
                best = min(diag, dl, ins)
                tol = 1e-9 * max(1.0, best)  # float costs: treat near-equal sums as ties
                mv = 0
                if diag <= best + tol:
                    mv |= 1
                if dl <= best + tol:
                    mv |= 2
                if ins <= best + tol:
                    mv |= 4
                moves[i, j] = mv
                cur[j] = best
            prev, cur = cur, prev
        k = 0
        i, j = n2, m2
        while i > 0 or j > 0:
            mv = moves[i, j]
            if (mv & 1) and i > 0 and j > 0 and A[s + i - 1] == B[s + j - 1]:
                i -= 1
                j -= 1
                continue
            if (mv & 4) and j > 0:
                top_op[k], top_i[k], top_j[k] = 3, i, j - 1
                j -= 1
            elif (mv & 2) and i > 0:
                top_op[k], top_i[k], top_j[k] = 2, i - 1, j
                i -= 1
            else:
                top_op[k], top_i[k], top_j[k] = 1, i - 1, j - 1
                i -= 1
                j -= 1
            k += 1
        # Forward over the ops, merging runs of one kind that continue each other.
        open_rec = False
        for t in range(k - 1, -1, -1):
            op, i, j = top_op[t], top_i[t] + s, top_j[t] + s
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
        if open_rec:
            r += 1
    return out[:r].copy()
