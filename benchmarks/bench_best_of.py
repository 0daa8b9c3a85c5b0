"""Latency of best-of-N against greedy decoding, one text at a time, as an editor or server calls it.

    python benchmarks/bench_best_of.py [--model RUN] [--rerank likelihood] [--n 10] [--best-of 8 16] [--heads shipped]

Greedy is single-text decoding with chain drafting (``--best-of 1``); best-of-N (the commands'
default at N = 16: reranked by the shipped rewrite likelihood less the source and length
penalties) decodes the greedy chain and N sampled ones in one batch and reranks their texts;
"+ heads" is the same with the rating heads added to the score (the commands' default; among the
top 5 instead, the same pass; the same seed, so the same candidates: the difference is the heads'
pass). Prints the median and
p90 seconds per text and the ratio of medians to greedy, measured in this one run on the first
``--n`` Moral Stories dev examples (each text: greedy, then every decoding, in turn, so load
changes hit all alike).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np

from secondthoughts.coherence import load_reranker
from secondthoughts.dataset_readers import read_dataset
from secondthoughts.decoding import HEADS, LENGTH_PENALTY, SOURCE_PENALTY
from secondthoughts.rating_heads import RatingHeads, heads_path
from secondthoughts.realign import Realigner, default_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a run folder (default: the shipped one)")
    ap.add_argument("--rerank", nargs="+", default=["likelihood"])
    ap.add_argument("--coherence-weight", type=float, default=1.0)
    ap.add_argument("--best-of", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--heads", default=HEADS, help="rating heads timed beside plain best-of-N ('none': not timed)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--data", default="../shared/data/moral_stories/moral_stories.jsonl")
    args = ap.parse_args()

    heads = None if args.heads == "none" else heads_path(args.heads)  # a bad folder stops before any model loads
    dev = [e for e in read_dataset("moral_stories", args.data).examples if e.meta.get("split") == "dev"][: args.n]
    r = Realigner(args.model or default_run())
    rerankers = {"": load_reranker(args.rerank, args.coherence_weight, SOURCE_PENALTY, LENGTH_PENALTY)}
    if heads is not None:  # the same scorers, loaded once, and the heads
        rerankers[" + heads"] = copy.copy(rerankers[""])
        rerankers[" + heads"].heads = RatingHeads.load(heads)
    r.realign(dev[0].context, dev[0].source)  # warm-up: first-call allocations
    times: dict[str, list[float]] = {"greedy": [], **{f"best-of-{n}{h}": [] for n in args.best_of for h in rerankers}}
    for k, ex in enumerate(dev):
        t0 = time.perf_counter()
        r.realign(ex.context, ex.source)
        times["greedy"].append(time.perf_counter() - t0)
        for n in args.best_of:
            for h, rerank in rerankers.items():
                t0 = time.perf_counter()
                r.realign(ex.context, ex.source, best_of=n, rerank=rerank, temperature=args.temperature, seed=k)
                times[f"best-of-{n}{h}"].append(time.perf_counter() - t0)
    base = statistics.median(times["greedy"])
    print(f"{len(dev)} Moral Stories dev texts, one at a time ({args.model or 'the shipped run'}; rerank {' '.join(args.rerank)})")
    print(f"{'decoding':<20} {'median s':>9} {'p90 s':>7} {'x greedy':>9}")
    for name, ts in times.items():
        print(f"{name:<20} {statistics.median(ts):9.2f} {float(np.percentile(ts, 90)):7.2f} {statistics.median(ts) / base:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
