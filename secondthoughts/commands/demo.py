"""``secondthoughts demo``: a model re-aligns some of the hand-written examples the package ships.

The model: ``--model RUN``; else the run shipped in the package (``examples/default-run``, see its
model card; copied in by ``scripts/ship_run.py``); else (``--retrain``) the embedded
SmolLM2-135M fine-tuned (LoRA) on those examples right here, once, into a cache folder
(``models.cache_root()/demo-run-<key>``, reused by the next call). It re-aligns a few examples
with constrained decoding and prints each chain as an inline diff with its readable lines, next
to the hand-written target's chain, and the texts themselves plainly. ``--no-model`` (or no
embedded model installed) shows the inferred chains only: the compact form a model is trained on,
and a check that every chain rebuilds its target.

The model trained here has seen these examples, so it shows the mechanics (a chain of edits
written, constrained, applied), not how well a model generalizes: train on a dataset for that
(``secondthoughts prepare`` + ``secondthoughts train``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from secondthoughts.chain_text import render_compact
from secondthoughts.commands.edits import parse_costs
from secondthoughts.data import Example, read_examples
from secondthoughts.diffview import chain_stats, inline_diff
from secondthoughts.edits import apply_text_edits, infer_text_edits, tokenize
from secondthoughts.readable import render_readable
from secondthoughts.settings import Part, add_config_flag, add_parts, setting

# The on-the-spot run: one chain per example (cost set 1,1,2), 6 epochs at a high LoRA learning
# rate (24 steps, ~10k tokens): loss 0.57 at the end, against 1.4 after 6 epochs at 1e-3.
# Changing these changes the cache key, so the next demo trains a new run.
DEMO_TRAIN: dict[str, Any] = {
    "epochs": 6.0,
    "lr": 3e-3,
    "lora_r": 8,
    "lora_alpha": 16,
    "batch_size": 2,
    "max_length": 256,
    "cost_sets": [[1.0, 1.0, 2.0]],
    "eval_fraction": 0.0,
    "patience": 0,
    "seed": 0,
}


def demo_examples_path() -> str:
    return str(resources.files("secondthoughts") / "examples" / "demo.jsonl")


@dataclass
class DemoOptions:
    """``demo``'s flags."""

    limit: int = setting(4, "how many examples to show")
    model: str | None = setting(None, "a trained run to re-align with (default: train a small one here, once, cached)", type=str)
    no_model: bool = setting(False, "only show the chains inferred between the hand-written pairs", flag="--no-model")
    retrain: bool = setting(False, "train the cached demo run again", flag="--retrain")
    max_new_tokens: int | None = setting(None, "generation budget per example (default: enough for the source)", type=int)
    costs: tuple[float, float, float] = setting((1.0, 1.0, 2.0), "--no-model: insert,delete,replace costs", type=parse_costs, metavar="I,D,R", shown="1,1,2")


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    return [(DemoOptions, None)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, "demo settings")
    add_parts(p, settings_parts())


# ---------------------------------------------------------------- the demo run


def demo_run_dir() -> Path:
    """The cache folder of the on-the-spot run, keyed by the demo data and settings."""
    from secondthoughts import __version__, models

    key = hashlib.sha256(Path(demo_examples_path()).read_bytes() + json.dumps([DEMO_TRAIN, __version__], sort_keys=True).encode())
    return models.cache_root() / f"demo-run-{key.hexdigest()[:12]}"


def demo_config(out: Path) -> Any:
    from secondthoughts.sft import TrainConfig

    return TrainConfig(data=demo_examples_path(), out=str(out), model="embedded", **DEMO_TRAIN)


def ensure_demo_run(console: Console, retrain: bool = False) -> Path:
    """The cached demo run, trained first if missing (the embedded model must be installed)."""
    from secondthoughts import models
    from secondthoughts.sft import train

    out = demo_run_dir()
    if (out / "model" / "adapter_config.json").is_file() and not retrain:
        console.print(f"[dim]using the demo run trained earlier: {out}[/dim]")
        return out
    models.embedded_gguf_path()  # FileNotFoundError names the missing package
    console.print(
        f"[bold]Fine-tuning the embedded SmolLM2-135M (LoRA) on the {sum(1 for _ in read_examples(demo_examples_path()))} "
        f"hand-written examples[/bold], once; a few minutes on 2 CPU cores. Cached in {out}."
    )
    t0 = time.perf_counter()
    result = train(demo_config(out))
    last = next((h["loss"] for h in reversed(result.history) if "loss" in h), float("nan"))
    console.print(f"[dim]trained {result.state.step} steps in {time.perf_counter() - t0:.0f} s, last loss {last:.3f}[/dim]")
    return out


# ---------------------------------------------------------------- views


def show_chains(console: Console, examples: list[Example], costs: tuple[float, float, float]) -> None:
    """The chains inferred between each hand-written pair (no model)."""
    totals = {"insert": 0, "delete": 0, "replace": 0}
    for ex in examples:
        chain = infer_text_edits(ex.source, ex.target, costs)
        if apply_text_edits(ex.source, chain) != ex.target:  # the engine's promise, checked live
            raise RuntimeError(f"{ex.id}: the inferred chain does not rebuild the target")
        console.print(Rule(ex.id, style="dim"))
        console.print(f"[dim]context:[/dim] {escape(ex.context)}")
        console.print(inline_diff(tokenize(ex.source), chain))
        for line in render_readable(chain, ex.source).splitlines():
            console.print(f"  {line}", markup=False)
        console.print("[dim]compact:[/dim] " + escape(render_compact(chain, ex.source)))
        for k, v in chain_stats(chain).items():
            if k in totals:
                totals[k] += v
    console.print(Rule(style="dim"))
    console.print(
        f"{len(examples)} examples, {sum(totals.values())} edits "
        f"({totals['replace']} replace, {totals['delete']} delete, {totals['insert']} insert); "
        "every chain applied back to its target exactly."
    )


def show_realigned(console: Console, run: Path | str, examples: list[Example], max_new_tokens: int | None) -> None:
    from secondthoughts.realign import Realigner

    t0 = time.perf_counter()
    realigner = Realigner(run)
    load_s = time.perf_counter() - t0
    results = realigner.realign_many(examples, batch_size=4, max_new_tokens=max_new_tokens, progress=True)
    for ex, r in zip(examples, results):
        console.print(Rule(ex.id, style="dim"))
        console.print(f"[dim]context:[/dim] {escape(ex.context)}")
        console.print("[bold]model:[/bold]     ", inline_diff(tokenize(ex.source), r.chain))
        for line in r.readable.splitlines():
            console.print(f"  {line}", markup=False)
        if r.truncated:
            console.print("  [yellow](the generation budget cut the chain: its complete edits are kept)[/yellow]")
        reference = infer_text_edits(ex.source, ex.target)
        console.print("[dim]hand-written:[/dim]", inline_diff(tokenize(ex.source), reference))
        # The texts themselves, plainly: a diff's colours are lost when the demo is piped or logged.
        for label, text in (("source", ex.source), ("model", r.text), ("hand-written", ex.target)):
            console.print(f"  {label + ':':<14}{text}", markup=False, highlight=False, soft_wrap=True)
    console.print(Rule(style="dim"))
    gen_s = sum(r.timings["generate_s"] / r.timings["batch_size"] for r in results)
    edits = sum(len(r.chain) for r in results)
    console.print(
        f"{len(results)} texts re-aligned by {escape(str(run))} ({edits} edits; every chain parsed and applied: "
        f"{all(r.valid for r in results)}); model loaded in {load_s:.1f} s, generation {gen_s:.1f} s."
    )


def packaged_run() -> Path | None:
    """The default run shipped inside the package (``realign.default_run``), if any."""
    from secondthoughts.realign import default_run

    return default_run()


def shipped_summary(run: Path) -> str:
    """One line on how a shipped run was trained, from its config.json."""
    from secondthoughts.realign import run_info

    info = run_info(run) or {}
    config = json.loads((run / "config.json").read_text(encoding="utf-8")) if (run / "config.json").is_file() else {}
    gap = info.get("merge_gap", -1)
    chains = f"{info.get('chain_format', 'positional')} chains" + (f" merged at gap {gap}" if gap >= 0 else "")
    # A run continued from another (``learn``, ``train --init-from``) says so: its pairs are the last stage's only.
    continued = f"continued from `{info['init_from']}`" if info.get("init_from") else ""
    dpo = config.get("dpo")
    if isinstance(dpo, dict):  # ``learn --pairs``: its train section is the start run's, which it continued
        return (f"SmolLM2-135M with a LoRA adapter taught by DPO on {dpo.get('pairs', 0):,} preference pairs "
                f"(beta {dpo.get('beta', 0):g}) on top of {f'a run {continued}' if continued else 'a trained run'}, {chains}")
    n, epochs = config.get("data", {}).get("train_examples"), info.get("epochs")
    how = continued or "trained by `secondthoughts train`"
    return (f"SmolLM2-135M with a LoRA adapter {how} on {f'{n:,}' if isinstance(n, int) else 'its'} Moral Stories "
            f"pairs, {f'{epochs:g}' if isinstance(epochs, (int, float)) else '?'} epoch(s), {chains}")


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    examples = list(read_examples(demo_examples_path()))[: args.limit]
    if args.no_model:
        show_chains(console, examples, args.costs)
        return 0
    t0 = time.perf_counter()
    try:
        run_dir: Path | str = args.model or (None if args.retrain else packaged_run()) or ensure_demo_run(console, args.retrain)
    except FileNotFoundError as e:  # no embedded model: the chains alone still show the idea
        console.print(f"[yellow]No model to re-align with ({escape(str(e))}); showing the chains of the examples.[/yellow]")
        show_chains(console, examples, args.costs)
        return 0
    if run_dir == packaged_run():
        console.print(f"[dim]The shipped model ({escape(shipped_summary(Path(run_dir)))}; model card in "
                      f"{escape(str(run_dir))}/README.md). It has never seen these hand-written examples.[/dim]")
    elif Path(run_dir) == demo_run_dir():
        console.print(
            "[dim]This model was fine-tuned on these very examples: it shows the mechanics (a chain written, "
            "constrained, applied), not how well a model generalizes.[/dim]"
        )
    show_realigned(console, run_dir, examples, args.max_new_tokens)
    console.print(f"[dim]demo wall time {time.perf_counter() - t0:.0f} s[/dim]")
    return 0
