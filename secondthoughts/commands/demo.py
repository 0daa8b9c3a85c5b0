"""``secondthoughts demo``: chains of edits on the hand-written examples the package ships.

For each example: the context, the value-unaligned source as an inline diff toward the
value-aligned target, the readable chain, and the compact form a model is trained on.
"""

from __future__ import annotations

import argparse
from importlib import resources

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from secondthoughts.commands.edits import parse_costs
from secondthoughts.data import read_examples
from secondthoughts.diffview import chain_stats, inline_diff
from secondthoughts.edits import apply_text_edits, infer_text_edits, render_compact, render_readable, tokenize


def demo_examples_path() -> str:
    return str(resources.files("secondthoughts") / "examples" / "demo.jsonl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=4, help="how many examples to show (default 4)")
    p.add_argument("--costs", type=parse_costs, default=(1.0, 1.0, 2.0), help="insert,delete,replace costs (default 1,1,2)")


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    examples = list(read_examples(demo_examples_path()))[: args.limit]
    totals = {"insert": 0, "delete": 0, "replace": 0}
    for ex in examples:
        chain = infer_text_edits(ex.source, ex.target, args.costs)
        if apply_text_edits(ex.source, chain) != ex.target:  # the engine's promise, checked live
            raise RuntimeError(f"{ex.id}: the inferred chain does not rebuild the target")
        console.print(Rule(ex.id, style="dim"))
        console.print(f"[dim]context:[/dim] {ex.context}", markup=True)
        console.print(inline_diff(tokenize(ex.source), chain))
        for line in render_readable(chain, ex.source).splitlines():
            console.print(f"  {line}", markup=False)
        console.print("[dim]compact:[/dim] " + escape(render_compact(chain)))
        for k, v in chain_stats(chain).items():
            if k in totals:
                totals[k] += v
    console.print(Rule(style="dim"))
    console.print(
        f"{len(examples)} examples, {sum(totals.values())} edits "
        f"({totals['replace']} replace, {totals['delete']} delete, {totals['insert']} insert); "
        "every chain applied back to its target exactly."
    )
    return 0
