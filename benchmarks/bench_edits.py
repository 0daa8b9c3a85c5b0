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
    for _ in range(repeat):
        t = time.perf_counter()
        E.infer_edits_many(pairs, *costs)
        best = min(best, time.perf_counter() - t)
    return best


COSTS = [(1, 1, 2), (1, 1, 1), (1, 1.5, 1.2), (2, 1, 1.5)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pairs = load_pairs(args.data)
    t = time.perf_counter()
    E._dp_chains([(("a", "b"), ("b", "c"))], (1.0, 1.5, 1.2))  # numba compiles (or loads its cache) once
    warm = time.perf_counter() - t
    n_tok = sum(len(a) + len(b) for a, b in pairs) / (2 * len(pairs))
    print(f"{len(pairs)} pairs, {n_tok:.1f} tokens per text on average; numba warm-up {warm:.2f} s (once per process)")

    base = best_time(Levenshtein.opcodes, pairs, args.repeat)
    rows = [("rapidfuzz Levenshtein.opcodes (unit costs, opcodes only)", base)]
    backends = [("C extension", E._cdp), ("numba fallback", None)] if E._cdp is not None else [("numba fallback", None)]
    compiled = E._cdp
    for backend, module in backends:
        E._cdp = module
        for costs in COSTS:
            rows.append((f"{backend}: infer_edits per pair, costs {costs}", best_time(lambda a, b, c=costs: E.infer_edits(a, b, *c), pairs, args.repeat)))
        for costs in COSTS[::2]:
            rows.append((f"{backend}: infer_edits_many, costs {costs}", best_batch(pairs, costs, args.repeat)))
    E._cdp = compiled
    print(f"{'method':<62} {'total s':>8} {'us/pair':>8} {'x rapidfuzz':>11}")
    for name, secs in rows:
        print(f"{name:<62} {secs:8.3f} {1e6 * secs / len(pairs):8.1f} {secs / base:11.2f}")


if __name__ == "__main__":
    main()
