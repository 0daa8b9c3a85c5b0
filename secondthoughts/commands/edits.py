"""``secondthoughts edits SOURCE TARGET``: the minimum-cost chain between two texts."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from rich.console import Console

from secondthoughts.chain_text import CHAIN_FORMATS, render_chain
from secondthoughts.diffview import chain_stats, inline_diff
from secondthoughts.edits import (
    apply_text_edits,
    chain_cost,
    infer_text_edits,
    tokenize,
)
from secondthoughts.readable import render_readable
from secondthoughts.settings import Part, add_config_flag, add_parts, setting


def parse_costs(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--costs must be three numbers like 1,1,2, got {text!r}") from None
    # inf and nan parse as floats; the edit distance needs finite, positive costs.
    if len(parts) != 3 or not all(p > 0 and math.isfinite(p) for p in parts):
        raise argparse.ArgumentTypeError(f"--costs must be three positive numbers insert,delete,replace, got {text!r}")
    return parts  # type: ignore[return-value]


@dataclass
class EditsOptions:
    """``edits``'s flags (the two texts are its arguments)."""

    costs: tuple[float, float, float] = setting((1.0, 1.0, 2.0), "insert,delete,replace costs", type=parse_costs, metavar="I,D,R", shown="1,1,2")
    json: bool = setting(False, "print the edits, total cost and applied target as JSON", flag="--json")
    chain_format: str = setting("anchored", "how the JSON's compact form is written (as `train --chain-format`)", choices=CHAIN_FORMATS)


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    return [(EditsOptions, None)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the value-unaligned text")
    p.add_argument("target", help="the value-aligned text")
    add_config_flag(p, "edits settings")
    add_parts(p, settings_parts())


def run(args: argparse.Namespace) -> int:
    chain = infer_text_edits(args.source, args.target, args.costs)
    applied = apply_text_edits(args.source, chain)
    if args.json:
        print(
            json.dumps(
                {
                    "edits": [e.to_dict() for e in chain],
                    "cost": chain_cost(chain, *args.costs),
                    "costs": dict(zip(("insert", "delete", "replace"), args.costs)),
                    "target": applied,
                    "compact": render_chain(chain, args.source, args.chain_format),
                    "readable": render_readable(chain, args.source).splitlines(),
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    console = Console(highlight=False)
    console.print(inline_diff(tokenize(args.source), chain))
    for line in render_readable(chain, args.source).splitlines():
        console.print(f"  {line}", markup=False)
    stats = chain_stats(chain)
    console.print(
        f"[dim]{len(chain)} edits ({stats['replace']} replace, {stats['delete']} delete, {stats['insert']} insert), "
        f"cost {chain_cost(chain, *args.costs):g} under costs {','.join(f'{c:g}' for c in args.costs)}[/dim]"
    )
    return 0
