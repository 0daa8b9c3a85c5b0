"""Chain inference speed against rapidfuzz's Levenshtein.opcodes, in one run.

    python benchmarks/bench_edits.py [--data ../shared/data/moral_stories/moral_stories.jsonl] [--repeat 3]

Every Moral Stories (immoral action, moral action) pair is tokenized once with the project's
edit tokenizer; then each method runs over all pairs, best of ``--repeat`` passes. The goal is
at most 3x rapidfuzz's time while supporting any costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from secondthoughts import edits as E

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/moral_stories/moral_stories.jsonl"


def load_pairs(path: Path) -> list[tuple[list[str], list[str]]]:
    if not path.exists():
        sys.exit(f"{path} not found: put the shared data beside the project (see ../shared/data/README.md)")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("immoral_action") and row.get("moral_action"):
                pairs.append((E.tokenize(row["immoral_action"]), E.tokenize(row["moral_action"])))
    return pairs


def best_time(fn, pairs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for a, b in pairs:
            fn(a, b)
        best = min(best, time.perf_counter() - t)
    return best


def best_batch(pairs, costs, repeat: int) -> float:
    best = float("inf")
    tpairs = [(tuple(a), tuple(b)) for a, b in pairs]
    for _ in range(repeat):
        t = time.perf_counter()
        if costs is None:
            E._dp_chains(tpairs, (1.0, 1.0, 2.0))
        else:
            E.infer_edits_many(pairs, *costs)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pairs = load_pairs(args.data)
    t = time.perf_counter()
    E.infer_edits(["a", "b"], ["b", "c"], 1, 1.5, 1.2)  # numba compiles (or loads its cache) once
    warm = time.perf_counter() - t
    n_tok = sum(len(a) + len(b) for a, b in pairs) / (2 * len(pairs))
    print(f"{len(pairs)} pairs, {n_tok:.1f} tokens per text on average; DP warm-up {warm:.2f} s (once per process)")

    base = best_time(Levenshtein.opcodes, pairs, args.repeat)
    rows = [("rapidfuzz Levenshtein.opcodes (unit costs, no chain)", base)]
    for costs in [(1, 1, 2), (1, 1, 1), (1, 1.5, 1.2), (2, 1, 1.5)]:
        rows.append((f"infer_edits costs {costs}", best_time(lambda a, b, c=costs: E.infer_edits(a, b, *c), pairs, args.repeat)))
    # The compiled DP alone, with the paper's costs, bypassing the rapidfuzz fast path.
    dp = lambda a, b: E._dp_chains([(tuple(a), tuple(b))], (1.0, 1.0, 2.0))  # noqa: E731
    rows.append(("compiled DP only, costs (1, 1, 2)", best_time(dp, pairs, args.repeat)))
    # Batched: one call for all pairs, as prepare and sequence building use it.
    for costs in [(1, 1, 2), (1, 1.5, 1.2)]:
        rows.append((f"infer_edits_many costs {costs}", best_batch(pairs, costs, args.repeat)))
    rows.append(("infer_edits_many, compiled DP only, costs (1, 1, 2)", best_batch(pairs, None, args.repeat)))

    print(f"{'method':<55} {'total s':>8} {'us/pair':>8} {'x rapidfuzz':>11}")
    for name, secs in rows:
        print(f"{name:<55} {secs:8.3f} {1e6 * secs / len(pairs):8.1f} {secs / base:11.2f}")


if __name__ == "__main__":
    main()
