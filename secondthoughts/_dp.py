"""Compiled edit-distance DP with arbitrary positive costs (numba, cached on disk)."""

from __future__ import annotations

import numpy as np
from numba import njit

# Op codes shared with edits.py: 1 replace, 2 delete, 3 insert (matches are not recorded).


@njit(cache=True, nogil=True)
def dp_ops(a: np.ndarray, b: np.ndarray, ci: float, cd: float, cr: float):  # pragma: no cover - compiled
    """Minimum-cost alignment of int arrays ``a`` -> ``b``.

    Returns (codes, i, j) in source order: for replace i/j index source/target, for delete i
    is the source index, for insert i is the source position it goes before and j the target
    index. Ties prefer, walking back from the end: match, insert, delete, replace, so that in
    source order a changed block reads replaces, then deletes, then inserts (as the fast path).
    """
    n, m = a.shape[0], b.shape[0]
    moves = np.zeros((n + 1, m + 1), np.uint8)  # bit 1: diagonal, 2: delete, 4: insert
    prev = np.empty(m + 1)
    cur = np.empty(m + 1)
    prev[0] = 0.0
    for j in range(1, m + 1):
        prev[j] = j * ci
        moves[0, j] = 4
    for i in range(1, n + 1):
        cur[0] = i * cd
        moves[i, 0] = 2
        ai = a[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (0.0 if ai == b[j - 1] else cr)
            dl = prev[j] + cd
            ins = cur[j - 1] + ci
            best = min(diag, dl, ins)
            tol = 1e-9 * max(1.0, best)
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
    codes = np.empty(n + m, np.int8)
    ii = np.empty(n + m, np.int64)
    jj = np.empty(n + m, np.int64)
    k = 0
    i, j = n, m
    while i > 0 or j > 0:
        mv = moves[i, j]
        if (mv & 1) and i > 0 and j > 0 and a[i - 1] == b[j - 1]:
            i -= 1
            j -= 1
        elif (mv & 4) and j > 0:
            codes[k], ii[k], jj[k] = 3, i, j - 1
            k += 1
            j -= 1
        elif (mv & 2) and i > 0:
            codes[k], ii[k], jj[k] = 2, i - 1, j
            k += 1
            i -= 1
        else:
            codes[k], ii[k], jj[k] = 1, i - 1, j - 1
            k += 1
            i -= 1
            j -= 1
    return codes[:k][::-1].copy(), ii[:k][::-1].copy(), jj[:k][::-1].copy()
