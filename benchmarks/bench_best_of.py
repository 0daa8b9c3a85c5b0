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
changes hit all alike). Each best-of row also gives the median of each part of its time: the
batch's decoding, and the rest (parsing the chains and choosing: the rerankers' and heads' passes,
nearly all of it); medians of parts need not add up to the median total. A last line times one
decoding step over a cached prompt at one row and at N + 1 rows: what a batch of samples costs a
step against one row on this machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

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
    phases: dict[str, list[tuple[float, float]]] = {k: [] for k in times if k != "greedy"}  # (decoding, the rest) seconds
    for k, ex in enumerate(dev):
        t0 = time.perf_counter()
        r.realign(ex.context, ex.source)
        times["greedy"].append(time.perf_counter() - t0)
        for n in args.best_of:
            for h, rerank in rerankers.items():
                t0 = time.perf_counter()
                res = r.realign(ex.context, ex.source, best_of=n, rerank=rerank, temperature=args.temperature, seed=k)
                times[f"best-of-{n}{h}"].append(time.perf_counter() - t0)
                t = res.timings
                phases[f"best-of-{n}{h}"].append((t["generate_s"], t["total_s"] - t["generate_s"] - t["prompt_s"]))
    base = statistics.median(times["greedy"])
    print(f"{len(dev)} Moral Stories dev texts, one at a time ({args.model or 'the shipped run'}; rerank {' '.join(args.rerank)})")
    print(f"{'decoding':<20} {'median s':>9} {'p90 s':>7} {'x greedy':>9} {'decoding s':>11} {'rest s':>9}")
    for name, ts in times.items():
        split = [statistics.median(p[j] for p in phases[name]) for j in (0, 1)] if name in phases else None
        cols = f" {split[0]:11.2f} {split[1]:9.2f}" if split else ""
        print(f"{name:<20} {statistics.median(ts):9.2f} {float(np.percentile(ts, 90)):7.2f} {statistics.median(ts) / base:9.2f}{cols}")
    one = step_seconds(r.model, 1)
    steps = []
    for n in args.best_of:
        many = step_seconds(r.model, n + 1)
        steps.append(f"{n + 1} rows {many * 1000:.0f} ms ({many / one:.2f}x)")
    print(f"one decoding step after 100 cached tokens: 1 row {one * 1000:.0f} ms, {', '.join(steps)}")
    return 0


def step_seconds(model: torch.nn.Module, rows: int, prompt: int = 100, steps: int = 20) -> float:
    """Median seconds of one cached decoding step for ``rows`` rows (random token ids; the first
    step, which allocates, is left out)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (rows, prompt), generator=gen)
    ts = []
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            cache = model(input_ids=torch.randint(100, 1000, (rows, 1), generator=gen), past_key_values=cache, use_cache=True).past_key_values
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts[1:])


if __name__ == "__main__":
    raise SystemExit(main())
