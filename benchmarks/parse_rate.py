"""Share of chains that parse and apply in ``secondthoughts realign --output`` files, with examples.

    python benchmarks/parse_rate.py realigned.jsonl [more.jsonl ...] [--show 3]

Per file: rows, valid chains (parsed and applied to the source), chains cut by the generation
budget, mean edits per chain, outputs identical to the source, the commonest errors, and the
first ``--show`` rows as source -> output.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def summarize(path: Path, show: int) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{path}: no rows")
    n = len(rows)
    valid = sum(bool(r["valid"]) for r in rows)
    cut = sum(bool(r.get("truncated")) for r in rows)
    same = sum(r["text"].strip() == r["source"].strip() for r in rows)
    edits = [len(r["chain"]) for r in rows if r["valid"]]
    print(f"{path}: {n} rows; valid {valid}/{n} = {valid / n:.1%}; cut by the budget {cut}; "
          f"identical to source {same}; mean edits per valid chain {sum(edits) / max(len(edits), 1):.2f}")
    errors = Counter(str(r["error"]).split(":")[0][:80] for r in rows if not r["valid"])
    for err, k in errors.most_common(5):
        print(f"  {k} x {err}")
    for r in rows[:show]:
        print(f"  - source: {r['source']}\n    output: {r['text']}")
        if r.get("target"):
            print(f"    gold:   {r['target']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--show", type=int, default=3, help="example rows to print per file")
    args = ap.parse_args()
    for f in args.files:
        summarize(f, args.show)


if __name__ == "__main__":
    main()
