"""Share of chains that parse and apply in ``secondthoughts realign --output`` files, with examples.

    python benchmarks/parse_rate.py realigned.jsonl [more.jsonl ...] [--show 3]

Per file: rows, valid chains (parsed and applied to the source), chains cut by the generation
budget, mean edits per chain, outputs identical to the source, the commonest kinds of error, how
many failed on a span that an earlier edit had already taken (it occurs only before its lookup, or
in an inline chain before where the kept text got to), and
the first ``--show`` rows as source -> output. For the delete and replace edits of every chain that
parses, where they fail: the span they copy occurs in the source, and at the written position
(a model that copies spans well but miscounts positions shows many found spans, few right positions;
an anchored edit stands where its span is found, so only written positions can miss).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from secondthoughts.chain_text import parse_compact
from secondthoughts.edits import EditError, tokenize


def span_positions(rows: list[dict]) -> tuple[int, int, int, int]:
    """(chains that parse, their delete/replace edits, spans found in the source, at the written position)."""
    parsed = edits = found = placed = 0
    for r in rows:
        try:
            chain = parse_compact(r["compact"], r["source"])
        except (EditError, KeyError):
            continue
        parsed += 1
        src = tokenize(r["source"])
        for e in chain:
            if e.op == "insert" or not e.old:
                continue
            n = len(e.old)
            starts = [i for i in range(len(src) - n + 1) if tuple(src[i : i + n]) == tuple(e.old)]
            edits += 1
            found += bool(starts)
            placed += e.start in starts
    return parsed, edits, found, placed


_MISPLACED = re.compile(
    r"""edit \d+ at character \d+: (?:kept text )?(['"])(.*)\1 (?:does not occur in the source after token|is not the source's text from token) (\d+)"""
)


def reaches_back(row: dict) -> bool:
    """Whether the chain failed on a span (an anchor, an inline chain's kept text) that is in the
    source, but only before where it had to stand: text the chain had already passed."""
    m = _MISPLACED.search(str(row["error"]))
    if not m:
        return False
    src, span, at = tokenize(row["source"]), tokenize(m.group(2)), int(m.group(3))
    return any(src[i : i + len(span)] == span for i in range(min(at, len(src))))


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
    # kinds of error: numbers and quoted text masked, so that one kind counts once
    errors = Counter(re.sub(r"\d+", "N", str(r["error"]).split(" but ")[0].split(", got")[0])[:80] for r in rows if not r["valid"])
    for err, k in errors.most_common(6):
        print(f"  {k} x {err}")
    back = sum(reaches_back(r) for r in rows if not r["valid"])
    print(f"  invalid chains whose failing span occurs in the source, but only before where its lookup starts: {back} of {n - valid}")
    parsed, edits, found, placed = span_positions(rows)
    if edits:
        print(f"  chains that parse: {parsed}/{n}; their {edits} delete/replace spans: in the source {found} ({found / edits:.0%}), "
              f"at the written position {placed} ({placed / edits:.0%})")
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
