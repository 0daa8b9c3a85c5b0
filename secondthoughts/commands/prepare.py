"""``secondthoughts prepare``: read a dataset, write normalized examples, report what happened.

Prints rows read, examples written, rows left out / skipped / unpaired with their reasons
grouped and counted, and chain-of-edits statistics (edits per example, tokens changed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from secondthoughts.data import Example, write_examples

from secondthoughts.dataset_readers import FORMATS, ReadOptions, read_dataset
from secondthoughts.settings import Part, add_config_flag, add_parts, flags_given, setting

OUTPUT_FLAGS = ("--output",)  # refused by cli.precheck when a folder, before the dataset is read


@dataclass
class PrepareFiles:
    """What ``prepare`` reads and writes (how it reads: ``dataset_readers.ReadOptions``)."""

    format: str | None = setting(None, "dataset format", type=str, choices=FORMATS, required=True)
    input: str | None = setting(None, "dataset file (.jsonl, .jsonl.gz, .csv, .tsv), or a dataset id for --format hub", type=str, required=True)
    output: str | None = setting(None, "where to write the normalized examples (JSONL)", type=str, required=True)


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    return [(PrepareFiles, None), (ReadOptions, None)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, "prepare settings")
    add_parts(p, settings_parts())


def _describe(values: Sequence[int]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"mean {statistics.fmean(ordered):.2f}  median {statistics.median(ordered):g}  p90 {p90}  max {ordered[-1]}"


def chain_stats(examples: Sequence[Example], costs: tuple[float, float, float] = (1, 1, 2)) -> dict[str, str]:
    """Edits per example and tokens changed per example (the longer side of each edit)."""
    from tqdm import tqdm

    from secondthoughts.edits import infer_edits, tokenize

    n_edits, changed = [], []
    # disable=None: a bar on a terminal, silence in logs and pipes.
    for ex in tqdm(examples, desc="chains of edits", unit="ex", file=sys.stderr, disable=None, leave=False):
        chain = infer_edits(tokenize(ex.source), tokenize(ex.target), *costs)
        n_edits.append(len(chain))
        changed.append(sum(max(len(e.old), len(e.new)) for e in chain))
    return {"edits per example": _describe(n_edits), "tokens changed per example": _describe(changed)}


def run(args: argparse.Namespace) -> int:
    options = flags_given(ReadOptions, args)
    result = read_dataset(args.format, args.input, **options)  # a DataError becomes one line in cli.main
    print(result.summary())
    if not result.examples:
        print("error: no examples to write", file=sys.stderr)
        return 1
    n = write_examples(args.output, result.examples)
    print(f"wrote {n} examples to {args.output}")
    for name, text in chain_stats(result.examples).items():
        print(f"  {name}: {text}")
    return 0
