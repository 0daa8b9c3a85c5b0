"""Blind ratings of the labels file summarised per system, from the labels alone: the first
candidate (``alt0``: the greedy chain's text in rounds that rated every candidate), a random
distinct candidate (the mean of a story's ``alt<j>``, each distinct text once), gold and source.

    python benchmarks/labels_summary.py --labels benchmarks/coherence_labels.jsonl --split cands43 cands44

Prints, per system, the mean of the two raters' Align and Coherence and the share at coherence 5
or more, each with a 95% bootstrap interval over stories (``metrics.mean_ci``). What a reranker
kept needs the candidates themselves: ``candidate_choice.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from collections import defaultdict

from secondthoughts.metrics import mean_ci

SYSTEMS = ("alt0", "random", "gold", "source")


def per_story(labels: list[dict], splits: set[str]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{story id: {system: (align, coherence, share at coherence >= 5)}} over ``splits``."""
    rated: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in labels:
        if r["split"] in splits:
            rated[r["id"]][r["system"]] = (st.mean(r["align"]), st.mean(r["coherence"]))
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for sid, systems in rated.items():
        alts = [v for k, v in systems.items() if k.startswith("alt")]
        row = {k: (a, c, float(c >= 5)) for k, (a, c) in systems.items() if k in SYSTEMS}
        if alts:
            row["random"] = (st.mean(a for a, _ in alts), st.mean(c for _, c in alts), st.mean(float(c >= 5) for _, c in alts))
        out[sid] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--split", required=True, nargs="+", help="the labels' split(s) to pool")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    with open(args.labels, encoding="utf-8") as f:
        labels = [json.loads(line) for line in f if line.strip()]
    stories = per_story(labels, set(args.split))
    if not stories:
        raise SystemExit(f"error: {args.labels}: no rows in split(s) {' '.join(args.split)}")
    print(f"{len(stories)} stories, split(s) {' '.join(args.split)}")
    print(f"{'system':<8} {'Align':>22} {'Coherence':>22} {'coherence >= 5':>22}")
    for system in SYSTEMS:
        rows = [s[system] for s in stories.values() if system in s]
        cells = ["-"] * 3
        if rows:
            ms = [mean_ci([r[k] for r in rows], args.resamples, seed=0) for k in range(3)]
            cells = [f"{m['mean']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]" for m in ms]
        print(f"{system:<8} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
