"""Blind ratings of the labels file summarised per system, from the labels alone: by default the
first candidate (``alt0``: the greedy chain's text in rounds that rated every candidate), a random
distinct candidate (the mean of a story's ``alt<j>``, each distinct text once), gold and source;
``--systems`` names others (a text several systems wrote is one row, its systems joined by "+").

    python benchmarks/labels_summary.py --labels benchmarks/coherence_labels.jsonl --split cands43 cands44
    python benchmarks/labels_summary.py --labels benchmarks/coherence_labels.jsonl --split dev46 \
        --systems default-learn41 trl-sft-3k gold source --paired default-learn41:trl-sft-3k default-learn41:gold

Prints, per system, the mean of the two raters' Align and Coherence and the share at coherence 5
or more, each with a 95% bootstrap interval over stories (``--level`` sets another, e.g. 0.99 for a
look the rule asks to be stricter); for each
``--paired A:B``, A minus B over the stories that have both, and A's mean coherence as a share of
B's, with intervals over the same resampled stories. What a reranker kept needs the candidates
themselves: ``candidate_choice.py``.
"""

from __future__ import annotations

import argparse
import re
import statistics as st
from collections import defaultdict

import candidate_choice as cc
import numpy as np

from secondthoughts.metrics import bootstrap_ci

SYSTEMS = ("alt0", "random", "gold", "source")
SCALES = ("Align", "Coherence", "coherence >= 5")
ALT = re.compile(r"alt\d+")  # the j-th distinct candidate of a round that rated every candidate


def per_story(labels: list[dict], splits: set[str]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{story id: {system: (align, coherence, share at coherence >= 5)}} over ``splits``; "random":
    the mean over a story's distinct ``alt<j>`` texts. A story's system rated in two of the pooled
    splits (one story read twice, or two models' candidates of one round) is an error: pool splits
    of different stories."""
    rated: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    seen: dict[tuple[str, str], str] = {}
    for r in labels:
        if r["split"] in splits:
            for system in r["system"].split("+"):
                if seen.setdefault((r["id"], system), r["split"]) != r["split"]:
                    raise SystemExit(f"error: story {r['id']}, system {system}: rated in splits {seen[(r['id'], system)]} and {r['split']}; pool splits of different stories")
                rated[r["id"]][system] = (st.mean(r["align"]), st.mean(r["coherence"]))
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for sid, systems in rated.items():
        alts = [v for k, v in systems.items() if ALT.fullmatch(k)]
        row = {k: (a, c, float(c >= 5)) for k, (a, c) in systems.items()}
        if alts:
            row["random"] = (st.mean(a for a, _ in alts), st.mean(c for _, c in alts), st.mean(float(c >= 5) for _, c in alts))
        out[sid] = row
    return out


def cell(values: np.ndarray | list[float], resamples: int, level: float = 0.95) -> str:
    """"mean [low, high]": the mean and its bootstrap interval (``level``) over stories."""
    arr = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(len(arr), lambda i: float(arr[i].mean()), resamples=resamples, seed=0, level=level) or (float("nan"),) * 2
    return f"{arr.mean():.2f} [{lo:.2f}, {hi:.2f}]"


def paired(stories: dict[str, dict[str, tuple[float, float, float]]], a: str, b: str, resamples: int, level: float = 0.95) -> list[str]:
    """Lines for A minus B on each scale and A's coherence as a share of B's, over the stories with both."""
    both = np.array([[s[a], s[b]] for s in stories.values() if a in s and b in s])  # (stories, 2, 3)
    if not len(both):
        return [f"{a} - {b}: no story has both"]
    lines = [f"{a} - {b}, {len(both)} stories:"]
    for k, scale in enumerate(SCALES):
        lines.append(f"  {scale:<15} {cell(both[:, 0, k] - both[:, 1, k], resamples, level):>22}")

    def ratio(i: np.ndarray) -> float:
        return float(both[i, 0, 1].mean() / both[i, 1, 1].mean())

    lo, hi = bootstrap_ci(len(both), ratio, resamples=resamples, seed=0, level=level) or (float("nan"),) * 2
    lines.append(f"  {'Coherence A/B':<15} {f'{ratio(np.arange(len(both))):.3f} [{lo:.3f}, {hi:.3f}]':>22}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--split", required=True, nargs="+", help="the labels' split(s) to pool")
    ap.add_argument("--systems", nargs="+", help=f"systems to print ('random': a random distinct alt<j>; default: {' '.join(SYSTEMS)})")
    ap.add_argument("--paired", nargs="+", default=[], metavar="A:B", help="A minus B, and A's coherence as a share of B's")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--level", type=float, default=0.95, help="the bootstrap intervals' level (default 0.95)")
    args = ap.parse_args()
    if args.resamples < 1:
        raise SystemExit(f"error: --resamples must be at least 1, got {args.resamples}")
    if not 0 < args.level < 1:
        raise SystemExit(f"error: --level must be between 0 and 1, got {args.level}")
    pairs = [p.split(":") for p in args.paired]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise SystemExit(f"error: --paired takes A:B, got {' '.join(args.paired)}")
    stories = per_story(cc.read_jsonl(args.labels), set(args.split))
    if not stories:
        raise SystemExit(f"error: {args.labels}: no rows in split(s) {' '.join(args.split)}")
    known = {k for s in stories.values() for k in s}
    missing = [k for k in dict.fromkeys([*(args.systems or []), *(x for p in pairs for x in p)]) if k not in known]
    if missing:
        raise SystemExit(f"error: {args.labels}: no system {', '.join(missing)} in split(s) {' '.join(args.split)}")
    print(f"{len(stories)} stories, split(s) {' '.join(args.split)}")
    systems = args.systems or list(SYSTEMS)  # named ones must exist; the defaults print "-" where a split has none
    width = max(8, *map(len, systems))
    print(f"{'system':<{width}} {'Align':>22} {'Coherence':>22} {'coherence >= 5':>22}")
    for system in systems:
        rows = [s[system] for s in stories.values() if system in s]
        cells = [cell([r[k] for r in rows], args.resamples, args.level) for k in range(3)] if rows else ["-"] * 3
        print(f"{system:<{width}} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")
    for a, b in pairs:
        print("\n".join(paired(stories, a, b, args.resamples, args.level)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
