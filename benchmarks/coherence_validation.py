"""How well each coherence measure sees what people see: AUC against hand labels, with intervals.

    python benchmarks/coherence_validation.py --labels benchmarks/coherence_labels.jsonl \
        --outputs shipped-apply.jsonl [OUTPUTS.jsonl ...] --scorer runs/coherence [--scorer runs/coherence-synthetic] \
        [--data ../shared/data/moral_stories/moral_stories.jsonl]

``--labels``: one row per hand-labelled output, ``{"id", "system", "split", "coherence": [rater scores 1-7],
"align": [...], "broken": bool}`` (ids and labels only: the texts are the outputs a model wrote on
Moral Stories, which the project does not commit). ``--outputs``: JSONL files of ``secondthoughts
realign`` / ``evaluate`` rows carrying ``id``, ``context``, ``source``, ``text`` (and ``chain``),
each tagged by a ``system`` field or by the file name's stem; the labelled rows are looked up
in them by (id, system); systems ``gold`` and ``source`` come from ``--data``. The labelled
``shipped-apply`` rows are the greedy outputs of ``secondthoughts/examples/demo-run`` on the first
120 Moral Stories dev examples: ``secondthoughts realign --model secondthoughts/examples/demo-run
--input dev120.jsonl --output shipped-apply.jsonl`` (``prepare --split dev --limit 120``). Only rows of ``split`` = ``--split`` (default: val) are scored: the
others may have trained a learned scorer.

Prints, per measure, the AUC of "fine" (mean coherence >= 5) against "broken" with a 95%
bootstrap interval, and for the learned scorers how often a gold target of the dev examples
scores above a splice of its own chain (``coherence.evaluate_scorer``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


from secondthoughts import coherence, models, reward
from secondthoughts.dataset_readers import read_dataset
from secondthoughts.edits import Edit
from secondthoughts.evaluate import Fluency


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--outputs", nargs="+", required=True, help="JSONL rows with id, context, source, text (system: a field or the file stem)")
    ap.add_argument("--scorer", nargs="*", default=[], help="coherence runs (reward train --objective coherence) to validate")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", default="../shared/data/moral_stories/moral_stories.jsonl", help="Moral Stories, for the unigram counts and the gold-vs-splice check")
    ap.add_argument("--unigram-examples", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=300, help="dev examples for the gold-vs-splice check")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    texts: dict[tuple[str, str], dict] = {}
    for path in args.outputs:
        for row in read_jsonl(path):
            texts[row["id"], row.get("system", Path(path).stem)] = row
    ms = read_dataset("moral_stories", args.data).examples
    dev = [e for e in ms if e.meta.get("split") == "dev"]
    for e in dev:  # the scale's anchors: gold targets and unchanged sources
        for system, text in (("gold", e.target), ("source", e.source)):
            texts.setdefault((e.id, system), {"id": e.id, "context": e.context, "source": e.source, "text": text, "chain": []})
    labels = [r for r in read_jsonl(args.labels) if r.get("split", "val") == args.split]
    missing = [(r["id"], r["system"]) for r in labels if (r["id"], r["system"]) not in texts]
    if missing:
        print(f"{len(missing)} labelled rows have no output in --outputs, e.g. {missing[:3]}", file=sys.stderr)
        return 2
    rows = [texts[r["id"], r["system"]] for r in labels]
    fine = [int(not r["broken"]) for r in labels]
    contexts, outs = [r["context"] for r in rows], [r["text"] for r in rows]
    print(f"{len(rows)} labelled outputs ({args.split}): {sum(fine)} fine, {len(fine) - sum(fine)} broken; systems {dict(Counter(r['system'] for r in labels))}")

    train = [e for e in ms if e.meta.get("split") == "train"][: args.unigram_examples]
    model, tok = models.load("embedded")
    lm = coherence.LMScorer(Fluency(model, tok, "embedded base"), coherence.unigram_counts(tok, [t for e in train for t in (e.target, e.source)]))
    joins = [coherence.chain_joins(r["source"], [Edit.from_dict(e) for e in r.get("chain", [])]) for r in rows]
    measures = lm.measures(outs, joins)
    # SLOR relative to the text's own source: the same writer's complete sentence sets the level.
    src = lm.measures([r["source"] for r in rows])
    measures["slor_minus_source"] = [a - b for a, b in zip(measures["slor"], src["slor"])]
    results: dict[str, dict] = {}
    for path in args.scorer:
        sc = reward.load(path)
        measures[f"scorer:{path}"] = sc.score(contexts, outs)
        results[f"scorer:{path}"] = {"gold_vs_splice": coherence.evaluate_scorer(sc.score, dev[: args.pairs])}
    model_rows = [i for i, r in enumerate(labels) if r["system"] not in ("gold", "source")]
    print(f"{'measure':<44} {'AUC':>6}  95% interval   (model outputs only: {len(model_rows)})")
    for name, scores in measures.items():
        a, lo, hi = coherence.auc_ci(scores, fine)
        m, mlo, mhi = coherence.auc_ci([scores[i] for i in model_rows], [fine[i] for i in model_rows])
        results.setdefault(name, {}).update(auc=a, ci95=[lo, hi], auc_model_outputs=m, ci95_model_outputs=[mlo, mhi])
        extra = ""
        if "gold_vs_splice" in results[name]:
            g = results[name]["gold_vs_splice"]
            extra = f"   gold above its splice {g['pairwise_accuracy']:.3f}, synthetic AUC {g['auc']:.3f}"
        print(f"{name:<44} {a:6.3f}  [{lo:.3f}, {hi:.3f}]   {m:.3f} [{mlo:.3f}, {mhi:.3f}]{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": len(rows), "fine": sum(fine), "measures": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
