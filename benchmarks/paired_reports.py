"""Two ``secondthoughts evaluate`` reports of the same stories, paired story by story: the mean
difference (first minus second) of each per-output score, with a 95% bootstrap interval.

    python benchmarks/paired_reports.py reports/default reports/trl [--fields reward_output reward2_output]

Reads each report's ``outputs.jsonl``; stories are matched by ``id`` and only those in both count
(their number is printed). A field missing from a row of either report leaves that story out of
that field's difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secondthoughts.metrics import mean_ci

FIELDS = ("reward_output", "reward2_output", "identical")


def outputs(report: Path) -> dict[str, dict]:
    path = report / "outputs.jsonl"
    if not path.is_file():
        sys.exit(f"error: {report}: no outputs.jsonl (an evaluate report folder?)")
    with path.open(encoding="utf-8") as f:
        return {row["id"]: row for row in map(json.loads, filter(str.strip, f))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--fields", nargs="+", default=list(FIELDS), help="per-output fields of outputs.jsonl")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    a, b = outputs(args.first), outputs(args.second)
    both = [k for k in a if k in b]
    print(f"{len(both)} stories in both ({args.first} minus {args.second})")
    for field in args.fields:
        d = [float(a[k][field]) - float(b[k][field]) for k in both if a[k].get(field) is not None and b[k].get(field) is not None]
        if not d:
            print(f"{field:16s} no values")
            continue
        m = mean_ci(d, args.resamples, seed=0)
        lo, hi = m["ci95"]
        print(f"{field:16s} {m['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]  (n = {m['n']})")


if __name__ == "__main__":
    main()
