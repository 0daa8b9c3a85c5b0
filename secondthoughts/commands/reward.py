"""``secondthoughts reward``: train the value-alignment reward model, or score a JSONL with it.

    secondthoughts reward train --data train.jsonl [--dev dev.jsonl] --out runs/reward [--max-train N] [--epochs 1] ...
    secondthoughts reward score --model runs/reward --input in.jsonl --output out.jsonl [--text-field target]

``train`` reads normalized examples (``secondthoughts prepare`` writes them); every field of
:class:`secondthoughts.reward.RewardConfig` is a flag (``--backbone PATH``, ``--head frozen``, ...).
It reports held-out accuracy per text (targets, sources and context sentences as hard
negatives) and pairwise accuracy (target above source), and writes them to the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from secondthoughts.commands.train import add_config_arguments
from secondthoughts.data import DataError, Example, _jsonl_rows, _RowError, read_examples, shuffled, split_examples
from secondthoughts.reward import RewardConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a reward model on examples", description="train a reward model on (context, source, target) examples")
    t.add_argument("--data", required=True, help="training examples JSONL (context, source, target; from `secondthoughts prepare`)")
    t.add_argument("--dev", help="held-out examples JSONL; default: hold out --dev-fraction of --data")
    t.add_argument("--dev-fraction", type=float, default=0.1, help="share of --data held out when --dev is not given (default 0.1)")
    t.add_argument("--max-train", type=int, help="train on at most N examples (a seeded sample)")
    t.add_argument("--max-dev", type=int, help="evaluate on at most N held-out examples (a seeded sample)")
    t.add_argument("--out", required=True, help="run folder to write (config, weights, tokenizer, metrics, model card)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    add_config_arguments(t, RewardConfig)

    s = sub.add_parser("score", help="score texts in a JSONL", description="append P(aligned) to every row of a JSONL")
    s.add_argument("--model", required=True, help="reward model run folder")
    s.add_argument("--input", required=True, help="JSONL with a context field and a text field per row")
    s.add_argument("--output", required=True, help="where to write the rows with the reward added")
    s.add_argument("--text-field", default="target", help="field holding the text to score (default target)")
    s.add_argument("--context-field", default="context", help="field holding the context (default context)")
    s.add_argument("--reward-field", default="reward", help="field to write the score to (default reward)")
    s.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                   help="float32 (exact); bfloat16 ~2x faster on CPUs with AVX512-BF16/AMX; auto picks (default float32)")


def run(args: argparse.Namespace) -> int:
    try:
        return _train(args) if args.action == "train" else _score(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- train


def _split(args: argparse.Namespace, seed: int) -> tuple[list[Example], list[Example], str]:
    train = list(read_examples(args.data))
    if args.dev:
        dev, dev_name = list(read_examples(args.dev)), args.dev
    elif args.dev_fraction > 0:
        parts = split_examples(train, {"dev": args.dev_fraction, "train": 1 - args.dev_fraction}, seed)
        train, dev, dev_name = parts["train"], parts["dev"], f"{args.dev_fraction:g} of {args.data}"
    else:
        dev, dev_name = [], "none"
    # Seeded samples by id hash: the same examples whatever the file order.
    if args.max_train is not None:
        train = shuffled(train, seed)[: args.max_train]
    if args.max_dev is not None:
        dev = shuffled(dev, seed)[: args.max_dev]
    if not train:
        raise ValueError(f"{args.data}: no training examples")
    return train, dev, dev_name


def _train(args: argparse.Namespace) -> int:
    from secondthoughts import reward

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before training, not after it
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    config = RewardConfig(**{f.name: getattr(args, f.name) for f in fields(RewardConfig) if hasattr(args, f.name)})
    train, dev, dev_name = _split(args, config.seed)
    print(f"training a {config.head} reward model on {len(train)} examples from {args.data}; {len(dev)} held out ({dev_name})")

    t0 = time.perf_counter()
    model, stats = reward.train(config, train)
    train_s = time.perf_counter() - t0
    print(f"trained on {stats['texts']} texts ({stats['targets']} targets, {stats['sources']} sources, "
          f"{stats['hard_negatives']} hard negatives) in {train_s:.0f} s")

    dev_metrics: dict[str, Any] = {"examples": 0}
    timing: dict[str, float] = {"train_s": round(train_s, 1)}
    if dev:
        t0 = time.perf_counter()
        dev_metrics = reward.evaluate(lambda c, t: model.score(c, t, progress=True), dev, hard_negatives=config.hard_negatives != 0)
        eval_s = time.perf_counter() - t0
        n_texts = dev_metrics["targets"] + dev_metrics["sources"] + dev_metrics["hard_negatives"]
        timing.update(eval_s=round(eval_s, 1), eval_texts_per_s=round(n_texts / eval_s, 1))
    metrics = {
        "data": {"train": args.data, "dev": dev_name, "max_train": args.max_train, "max_dev": args.max_dev},
        "train": stats,
        "dev": dev_metrics,
        "timing": timing,
    }
    model.save(out, metrics)
    print(format_metrics(dev_metrics))
    print(f"wrote {out} (config.json, model/, metrics.json, README.md)")
    return 0


def format_metrics(m: dict[str, Any]) -> str:
    if not m.get("examples"):
        return "no held-out examples: nothing measured"
    n = m["targets"] + m["sources"] + m["hard_negatives"]
    lines = [
        f"held out: {m['examples']} examples, {n} texts",
        f"  accuracy (per text)      {m['accuracy']:.4f}",
        f"    targets (aligned)      {m['accuracy_target']:.4f}   mean reward {m['mean_reward_target']:.3f}",
        f"    sources (unaligned)    {m['accuracy_source']:.4f}   mean reward {m['mean_reward_source']:.3f}",
    ]
    if "accuracy_context" in m:
        lines.append(f"    context sentences      {m['accuracy_context']:.4f}   mean reward {m['mean_reward_context']:.3f}")
    lines.append(f"  pairwise accuracy        {m['pairwise_accuracy']:.4f}   (target above source)")
    if "echo_accuracy" in m:
        lines.append(f"  echo accuracy            {m['echo_accuracy']:.4f}   (target above every context sentence)")
    return "\n".join(lines)


# ---------------------------------------------------------------- score


def read_rows(path: str, context_field: str, text_field: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows of a JSONL with their context and text; a bad row raises DataError naming file and line.

    Rows come from ``data._jsonl_rows``, the package's one JSONL reader (BOM, .gz, blank lines).
    """
    rows, contexts, texts = [], [], []
    for line, row in _jsonl_rows(Path(path)):
        if isinstance(row, _RowError):
            raise DataError(row.message(path, line))
        for key in (context_field, text_field):
            if not isinstance(row.get(key), str):
                problem = "missing" if row.get(key) is None else f"expected a string, got {type(row[key]).__name__}"
                raise DataError(f"{path}:{line}: field {key!r}: {problem}")
        rows.append(row)
        contexts.append(row[context_field])
        texts.append(row[text_field])
    return rows, contexts, texts


def write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """JSONL written to a temporary file and renamed into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _score(args: argparse.Namespace) -> int:
    from secondthoughts.reward import RewardModel

    rows, contexts, texts = read_rows(args.input, args.context_field, args.text_field)
    model = RewardModel.load(args.model, dtype=args.dtype, batch_size=args.batch_size)
    t0 = time.perf_counter()
    scores = model.score(contexts, texts, progress=True)
    elapsed = time.perf_counter() - t0
    for row, s in zip(rows, scores):
        row[args.reward_field] = s
    write_rows(args.output, rows)
    mean = f", mean {statistics.fmean(scores):.3f}" if scores else ""
    rate = f" ({len(scores) / elapsed:.0f} texts/s)" if scores and elapsed > 0 else ""
    print(f"scored {len(scores)} texts{mean}{rate}; wrote {args.output}")
    return 0
