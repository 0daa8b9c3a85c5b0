"""Which scorer picks, between two outputs of one story, the one readers rated higher? The
question a best-of-N reranker has to answer, asked of the hand labels.

    python benchmarks/rerank_agreement.py --labels benchmarks/coherence_labels.jsonl --rated rated.jsonl \
        [--reward runs/reward-ms] [--reward runs/reward-ms-frozen] [--splits blind4 blind5 ...]

``--rated``: JSONL of the rated texts, one row per (split, id, system) of the labels file with
``context``, ``source`` and ``text`` (the texts are model outputs on Moral Stories, which the
project does not commit; a blind round's packet and key give them). Pairs are two different
texts of one story in one split (one round of raters), gold and source left out, whose mean
ratings differ by at least 1; a scorer agrees when it scores the higher-rated text higher (a tie
counts half).
Scorers: the shipped rewrite model's likelihood (``--rerank likelihood``), the reward runs'
``log P(aligned)``, and the context's pointwise information: the likelihood minus the same
likelihood with the context left out (how much the norm and situation raise the text). Prints
each scorer's agreement on coherence, align and their sum, with 95% intervals from resampling
stories.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from collections import defaultdict
from collections.abc import Callable

from secondthoughts import reward
from secondthoughts.likelihood import RewriteLikelihood, shipped_rewrite_run


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scored_items(labels: list[dict], rated: list[dict], rewards: list[str]) -> list[dict]:
    """The labelled model outputs with their mean ratings and every scorer's score."""
    texts = {(r["split"], r["id"], r["system"]): r for r in rated}
    items = []
    for lab in labels:
        key = (lab["split"], lab["id"], lab["system"])
        if lab["system"] in ("gold", "source") or key not in texts:
            continue
        row = texts[key]
        items.append({"story": (lab["split"], lab["id"]), "context": row["context"], "source": row["source"], "text": row["text"],
                      "align": sum(lab["align"]) / len(lab["align"]), "coherence": sum(lab["coherence"]) / len(lab["coherence"])})  # fmt: skip
    ctx, txt, src = [i["context"] for i in items], [i["text"] for i in items], [i["source"] for i in items]
    lik = RewriteLikelihood(str(shipped_rewrite_run()))
    with_ctx = [s for a in range(0, len(items), 16) for s in lik(ctx[a : a + 16], txt[a : a + 16], src[a : a + 16])]
    without = [s for a in range(0, len(items), 16) for s in lik([""] * len(txt[a : a + 16]), txt[a : a + 16], src[a : a + 16])]
    for i, a, b in zip(items, with_ctx, without):
        i["likelihood"], i["context PMI"] = float(a), float(a) - float(b)
    for path in rewards:
        for i, p in zip(items, reward.load_scorer(path)(ctx, txt)):
            i[f"log P(aligned), {path}"] = math.log(min(max(float(p), 1e-6), 1.0))
    return items


def agreement(items: list[dict], score: Callable[[dict], float], rating: Callable[[dict], float], seed: int = 0) -> tuple[float, float, float, int]:
    """Share of pairs the scorer orders as readers did, its 95% interval over resampled stories, pairs."""
    stories: dict[tuple, list[dict]] = defaultdict(list)
    for i in items:
        stories[i["story"]].append(i)
    per = [[(a, b) for a, b in itertools.combinations(g, 2) if a["text"] != b["text"] and abs(rating(a) - rating(b)) >= 1] for g in stories.values()]
    per = [p for p in per if p]
    hits = [sum(0.5 if score(a) == score(b) else float((score(a) > score(b)) == (rating(a) > rating(b))) for a, b in p) for p in per]
    sizes = [len(p) for p in per]
    rng, draws = random.Random(seed), []
    for _ in range(2000):
        pick = [rng.randrange(len(per)) for _ in per]
        draws.append(sum(hits[k] for k in pick) / sum(sizes[k] for k in pick))
    draws.sort()
    return sum(hits) / sum(sizes), draws[50], draws[1949], sum(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True)
    ap.add_argument("--rated", required=True)
    ap.add_argument("--reward", action="append", default=[], help="reward run folder (repeatable)")
    ap.add_argument("--splits", nargs="*", help="label splits to use (default: every split --rated has texts for)")
    args = ap.parse_args()
    labels = [r for r in read_jsonl(args.labels) if not args.splits or r["split"] in args.splits]
    items = scored_items(labels, read_jsonl(args.rated), args.reward)
    if not items:
        raise SystemExit("no labelled model output has a text in --rated (same split, id and system)")
    scorers: dict[str, Callable[[dict], float]] = {name: (lambda i, n=name: i[n]) for name in items[0] if name in ("likelihood", "context PMI") or name.startswith("log P")}
    scorers["likelihood + 0.25 context PMI"] = lambda i: i["likelihood"] + 0.25 * i["context PMI"]
    ratings = {"coherence": lambda i: i["coherence"], "align": lambda i: i["align"], "align + coherence": lambda i: i["align"] + i["coherence"]}
    print(f"{len(items)} rated model outputs of {len({i['story'] for i in items})} stories")
    for what, rating in ratings.items():
        rows = [(name, *agreement(items, score, rating)) for name, score in scorers.items()]
        print(f"\n{what} ({rows[0][4]} pairs)")
        for name, est, lo, hi, _ in rows:
            print(f"  {name:<45} {est:.2f} [{lo:.2f}, {hi:.2f}]")


if __name__ == "__main__":
    main()
