"""Best-of-N's choice: of a text's candidate re-alignments (the greedy chain and sampled ones),
the one a reranker scores highest (``Realigner.realign_many(best_of=N, rerank=...)``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from secondthoughts.realign import RealignResult

# Scores texts in their contexts, higher = better: a reward model, or coherence.Reranker.
Reranker = Callable[[list[str], list[str]], list[float]]


def choose_best(candidates: Sequence[RealignResult], rerank: Reranker) -> RealignResult:
    """The candidate whose text ``rerank`` scores highest, or, when ``rerank`` has rating heads
    (``rerank.heads``, a ``rating_heads.RatingHeads``), the valid, changed candidate that scores
    highest with their ratings added, weighted by ``rerank.heads_add`` (``rerank.heads_choice``
    "add": ``rating_heads.heads_added``), or the one they rate best among the ``rerank.heads_top``
    that score highest ("top": ``rating_heads.top_then_heads``; ties: the better score, then the
    first). Invalid chains and texts identical to the source are chosen only when no candidate is
    valid and changed (a reranker may well score the unchanged source high); ties go to the first.
    Each distinct text is scored once; the chosen result's ``alternatives`` lists them all with
    their scores (and the heads' raw ratings of those they read), ``score_penalties`` the source and
    length penalties those scores include (a ``coherence.Reranker``'s; 0 for any other callable)."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    texts = list(dict.fromkeys(r.text for r in candidates))
    context = candidates[0].context
    # A scorer that takes sources (a rewrite model's likelihood of the text) gets them.
    extra = {"sources": [candidates[0].source] * len(texts)} if getattr(rerank, "takes_sources", False) else {}
    scores = dict(zip(texts, rerank([context] * len(texts), texts, **extra)))
    changed = [r for r in candidates if r.valid and r.text != r.source]
    useful = changed or list(candidates)
    best = max(useful, key=lambda r: scores[r.text])  # max keeps the first of equal scores
    heads = getattr(rerank, "heads", None)
    kept = list(dict.fromkeys(r.text for r in changed))  # what the heads were trained and read on
    rated: dict[str, list[float]] = {}
    if heads is not None and len(kept) > 1:  # rating heads choose: added to the score, or among its top candidates
        from secondthoughts.rating_heads import heads_added, top_then_heads

        rated = dict(zip(kept, heads.score(context, candidates[0].source, kept).tolist()))  # standardised over these
        base, ratings = [scores[t] for t in kept], np.array(list(rated.values()))
        add = rerank.heads_choice == "add"
        pick = kept[heads_added(base, ratings, rerank.heads_add) if add else top_then_heads(base, ratings, rerank.heads_top)]
        best = next(r for r in useful if r.text == pick)
    best.candidates, best.rerank_score = len(candidates), float(scores[best.text])
    valid = {t: any(r.valid for r in candidates if r.text == t) for t in texts}  # one valid chain makes a text valid
    best.alternatives = [{"text": t, "valid": valid[t], "score": float(scores[t])} for t in texts]
    best.score_penalties = {"source": float(getattr(rerank, "source_penalty", 0.0)), "length": float(getattr(rerank, "length_penalty", 0.0))}
    if rated:
        for alt in best.alternatives:
            if alt["text"] in rated:
                alt["heads"] = dict(zip(("align", "coherence"), rated[alt["text"]]))
    return best
