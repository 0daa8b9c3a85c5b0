"""``secondthoughts bench``: the benchmark grid of :mod:`secondthoughts.bench`.

    secondthoughts bench --config benchmarks/paper.yaml --out bench/ [--config gpu.yaml]
        [--set train.epochs=3 --set seeds=[0,1,2]] [--only 's0/moral_stories/*'] [--dry-run] [--report]

Cells already finished are skipped; run the same command again to continue a killed run.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", required=True, help="benchmark YAML; repeat to layer a second file over the first (e.g. GPU sizes)")
    p.add_argument("--out", required=True, help="folder of the cells, results.json, results.md and plots")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set train.epochs=3 --set 'seeds=[0,1,2]' (values read as YAML)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="run only the cells whose key matches (and what they depend on), e.g. 's0/moral_stories/*'")
    p.add_argument("--dry-run", action="store_true", help="list the cells with their status (done / partial / stale / todo) and estimated times; run nothing")
    p.add_argument("--report", action="store_true", help="rewrite results.json, results.md and the plots from the finished cells; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


def run(args: argparse.Namespace) -> int:
    from secondthoughts.bench import Bench, load_config

    # A ConfigError or a missing file becomes one line in cli.main.
    cfg = load_config(args.config, args.set)
    bench = Bench(cfg, args.out, progress=not args.no_progress, log=lambda s: print(s, flush=True))
    if args.dry_run:
        print(bench.dry_run(args.only))
        return 0
    results = bench.write_results() if args.report else bench.run(args.only)
    print(f"wrote {bench.out / 'results.json'}, {bench.out / 'results.md'} ({results['cells']['done']} of {results['cells']['total']} cells finished)")
    for claim in results["claims"]:
        print(f"  claim ({claim['id']}) {claim['claim']}: {claim['verdict']}")
    return 0
