"""Re-alignment latency: ``apply`` (chain only, applied) vs ``generate`` (chain then target), in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_realign.py --model RUN [--direct-model RUN] [--n 20] [--prompt-lookup 10]
                                       [--data ../shared/data/moral_stories/moral_stories.jsonl] [--max-new-tokens N]

One model, ``--n`` Moral Stories dev examples, one example at a time (per-example latency, as an
editor or a server sees it), greedy, constrained. Modes run round-robin on each example, so a
busy machine slows them alike. Reported per mode: median and p95 latency, examples/s, new
tokens per example, valid chains, and (generate) how often the target differs from the chain
applied. ``--prompt-lookup N`` adds each mode again with transformers' prompt-lookup drafting
(copying N tokens at a time from the prompt; greedy output is unchanged, which is checked).
``+chain`` rows use ``secondthoughts.drafting`` (``draft="chain"``, apply mode's default one
text at a time): spans and positions drafted from the source, in generate mode the target by
prompt lookup; same output, checked too. ``--direct-model`` adds a run trained with ``--mode
direct``. Goal: apply at most half the time of generate: the headline ratio is apply+chain
against the faster of generate and generate+lookup; apply+chain against generate+chain is
printed too. ``--n 100`` for the full figure; ``OMP_NUM_THREADS=1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/moral_stories/moral_stories.jsonl"


def load_examples(path: Path, n: int) -> list[Any]:
    from secondthoughts.dataset_readers import read_dataset

    if not path.exists():
        sys.exit(f"{path} not found: put the shared data beside the project (see ../shared/data/README.md)")
    return read_dataset("moral_stories", path, split="dev", limit=n).examples


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a chain-of-edits run (secondthoughts train --mode coe)")
    ap.add_argument("--direct-model", help="a run trained with --mode direct, for the direct baseline")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Moral Stories JSONL")
    ap.add_argument("--n", type=int, default=20, help="dev examples (default 20; 100 for the full figure)")
    ap.add_argument("--prompt-lookup", type=int, default=10, help="drafted tokens per step for the +lookup rows (0: skip them)")
    ap.add_argument("--max-new-tokens", type=int, help="generation budget (default: the realigner's, from the source length)")
    ap.add_argument("--warmup", type=int, default=1, help="examples run first and not timed (default 1)")
    args = ap.parse_args()

    import torch

    from secondthoughts.realign import Realigner

    examples = load_examples(args.data, args.n + args.warmup)
    coe = Realigner(args.model)
    realigners = {"coe": coe}
    configs: list[tuple[str, str, dict[str, Any]]] = [
        ("apply", "coe", {"mode": "apply", "draft": "none"}),
        ("generate", "coe", {"mode": "generate", "draft": "none"}),
        ("apply+chain", "coe", {"mode": "apply", "draft": "chain"}),
        ("generate+chain", "coe", {"mode": "generate", "draft": "chain"}),
    ]
    if args.prompt_lookup:
        k = args.prompt_lookup
        configs += [(f"apply+lookup{k}", "coe", {"mode": "apply", "prompt_lookup_num_tokens": k, "draft": "none"}),
                    (f"generate+lookup{k}", "coe", {"mode": "generate", "prompt_lookup_num_tokens": k, "draft": "none"})]  # fmt: skip
    if args.direct_model:
        realigners["direct"] = Realigner(args.direct_model)
        configs.append(("direct", "direct", {"mode": "direct"}))
        if args.prompt_lookup:
            lookup = {"mode": "direct", "prompt_lookup_num_tokens": args.prompt_lookup}
            configs.append((f"direct+lookup{args.prompt_lookup}", "direct", lookup))

    lat: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    results: dict[str, list[Any]] = {name: [] for name, _, _ in configs}
    for i, ex in enumerate(examples):
        for name, which, kw in configs:
            t0 = time.perf_counter()
            r = realigners[which].realign(ex.context, ex.source, max_new_tokens=args.max_new_tokens, **kw)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                lat[name].append(dt)
                results[name].append(r)
        print(f"\r{i + 1}/{len(examples)} examples", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    n = len(examples) - args.warmup
    print(f"model {args.model}; {n} Moral Stories dev examples, one at a time, greedy, constrained; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'mode':<20} {'median s':>9} {'p95 s':>8} {'ex/s':>7} {'new tok':>8} {'tok/fwd':>8} {'valid':>6} {'truncated':>9} {'disagree':>8}")
    for name, _, _ in configs:
        xs, rs = lat[name], results[name]
        dis = [r.disagrees for r in rs if r.disagrees is not None]
        fwd = [r.timings["forwards"] for r in rs if "forwards" in r.timings]  # drafting: tokens per forward pass
        per = f"{sum(r.timings['new_tokens'] for r in rs) / sum(fwd):.2f}" if fwd else "-"
        print(
            f"{name:<20} {statistics.median(xs):>9.3f} {p95(xs):>8.3f} {len(xs) / sum(xs):>7.2f} "
            f"{statistics.fmean(r.timings['new_tokens'] for r in rs):>8.1f} {per:>8} {sum(r.valid for r in rs):>6} "
            f"{sum(r.truncated for r in rs):>9} {f'{sum(dis)}/{len(dis)}' if dis else '-':>8}"
        )

    def ratio(a: str, b: str) -> str:
        median = statistics.median(lat[a]) / statistics.median(lat[b])
        return f"{a} / {b}: median {median:.2f}x, total time {sum(lat[a]) / sum(lat[b]):.2f}x"

    # The goal's comparison: apply with its drafting against generate with transformers' options
    # (plain or prompt lookup), whichever is faster; then against generate with the same drafter.
    generates = [name for name, _, kw in configs if kw["mode"] == "generate" and kw["draft"] == "none"]
    best = min(generates, key=lambda g: statistics.median(lat[g]))
    print(ratio("apply+chain", best), f"(goal <= 0.5; {best} is the faster of {', '.join(generates)})")
    print(ratio("apply+chain", "generate+chain"), "(the same drafter on both sides)")
    print(ratio("apply", "generate"), "(both plain greedy)")
    drafted = ["+chain"] + ([f"+lookup{args.prompt_lookup}"] if args.prompt_lookup else [])
    for mode in ("apply", "generate"):
        for suffix in drafted:
            print(ratio(f"{mode}{suffix}", mode))
            same = sum(a.compact == b.compact and a.generated_target == b.generated_target
                       for a, b in zip(results[mode], results[f"{mode}{suffix}"]))  # fmt: skip
            print(f"  {mode}{suffix} gives the same output as {mode} on {same}/{n} examples")
    if args.direct_model:
        print(ratio("apply", "direct"))


if __name__ == "__main__":
    main()
