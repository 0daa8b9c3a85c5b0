"""``secondthoughts realign``: re-align texts with a trained run.

    secondthoughts realign --model RUN [--context C] "TEXT" [--prefix CHAIN] [--mode apply|generate|direct] [--json]
    secondthoughts realign --model RUN --input in.jsonl --output out.jsonl [--batch-size 8]

One text: the coloured inline diff, the readable chain and the re-aligned text (``--json``: the
whole result). A batch: rows with ``source`` and optional ``context`` and ``prefix``; each output
row is the input row plus the result fields, written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secondthoughts.data import DataError, RowError, jsonl_rows
from secondthoughts.settings import Part, add_config_flag, add_parts, setting

OUTPUT_FLAGS = ("--output",)  # refused by cli.precheck when a folder, before the model loads


BATCH_HELP = "texts per generation batch; with --best-of N it counts rows: a text takes N + 1, at least one text a batch"
# One meaning of --dtype auto per kind of command (docs/methods.md, "Precision"): commands that load a
# model to decode (realign, evaluate, serve) hold bf16 weights on a CUDA GPU with bf16, else fp32;
# training (train, refine) keeps fp32 weights and autocasts to bf16 on such a GPU.
DTYPE_HELP = "weights dtype: auto (bfloat16 on a CUDA GPU with bf16, else float32), float32, bfloat16"


@dataclass
class DeviceOptions:
    """Where a decoding command's model runs (realign, evaluate, serve)."""

    device: str | None = setting(None, "cpu, cuda, cuda:1, ... (default: cuda if available)", type=str)
    dtype: str = setting("auto", DTYPE_HELP, choices=("auto", "float32", "bfloat16"))


@dataclass
class RealignOptions:
    """``realign``'s own flags (the decoding ones: ``decoding.DecodeSettings``)."""

    model: str | None = setting(None, "a `secondthoughts train` run folder (or a model folder with edit tokens); default: the run shipped in the package", type=str)
    context: str = setting("", "the situation / norm the text responds to")
    prefix: str | None = setting(None, "first edits to force (compact form or readable lines); the model continues after them", type=str)
    json: bool = setting(False, "print the result as JSON", flag="--json")
    input: str | None = setting(None, "JSONL of rows with source (and optional context, prefix) to re-align in batches", type=str)
    output: str | None = setting(None, "where --input's rows go, with the result fields added", type=str)
    keep_candidates: bool = setting(False, "best-of-N: also write every distinct candidate text with its validity and rerank score (field alternatives)", flag="--keep-candidates")
    batch_size: int = setting(8, BATCH_HELP)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="the text to re-align (or --input)")
    add_config_flag(p, "realign settings")
    add_parts(p, settings_parts())


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    from secondthoughts.decoding import DecodeSettings

    return [(RealignOptions, None), (DecodeSettings, None), (DeviceOptions, None)]


def torch_dtype(name: str) -> Any:
    """``--dtype`` as a torch dtype; None for auto (``models.default_dtype`` decides by device)."""
    import torch

    return {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def check_best_of(args: argparse.Namespace) -> None:
    """Fail before any model loads on a bad --best-of / --rerank. Best-of (the default) samples:
    a plain search asked for (--beams, --sample, --prompt-lookup, --draft chain) decodes without it,
    and says so."""
    if args.best_of < 1:
        raise ValueError(f"--best-of must be >= 1, got {args.best_of}")
    plain = [f for f, on in (("--beams", getattr(args, "num_beams", 1) > 1), ("--sample", getattr(args, "do_sample", False)),
                             ("--prompt-lookup", bool(getattr(args, "prompt_lookup_num_tokens", None))),
                             ("--draft chain", getattr(args, "draft", "auto") == "chain")) if on]  # fmt: skip
    if args.best_of > 1 and plain:
        print(f"note: {' and '.join(plain)}: decoding without best-of (--best-of 1)", file=sys.stderr)
        args.best_of = 1
    if args.best_of > 1:
        from secondthoughts.coherence import check_reranker

        check_reranker(args.rerank, **rerank_settings(args))


def best_of_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``best_of`` and a loaded ``rerank`` for ``realign_many`` (``check_best_of`` first)."""
    if args.best_of == 1:
        return {}
    from secondthoughts.coherence import load_reranker

    return {"best_of": args.best_of, "rerank": load_reranker(args.rerank, device=getattr(args, "device", None), **rerank_settings(args))}  # --device: the scorers too


def rerank_settings(args: argparse.Namespace) -> dict[str, Any]:
    from secondthoughts.decoding import RERANK_SETTINGS

    return {k: getattr(args, k) for k in RERANK_SETTINGS}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """``realign`` / ``realign_many`` keyword arguments from the decoding flags (``best_of_settings`` adds best-of)."""
    from secondthoughts.decoding import DecodeSettings

    return DecodeSettings.from_args(args).realign_kwargs()


def read_items(path: str) -> list[dict[str, Any]]:
    """Rows with a string ``source``; ``context`` and ``prefix`` optional. Errors name file and line."""
    from secondthoughts.edits import EditError
    from secondthoughts.readable import as_chain

    rows = []
    for line, row in jsonl_rows(Path(path)):
        if isinstance(row, RowError):
            raise DataError(row.message(path, line))
        if not isinstance(row.get("source"), str):
            raise DataError(f"{path}:{line}: field 'source': {'missing' if row.get('source') is None else 'expected a string'}")
        if not isinstance(row.get("context", ""), str):
            raise DataError(f"{path}:{line}: field 'context': expected a string")
        if row.get("prefix"):
            try:
                as_chain(row["prefix"], row["source"], what="prefix")
            except (EditError, TypeError) as e:
                raise DataError(f"{path}:{line}: field 'prefix': {e}") from None
        rows.append(row)
    return rows


def load_realigner(args: argparse.Namespace, run: str | None = None) -> Any:
    """The Realigner of ``run`` (default: ``--model``) on ``--device`` in ``--dtype``."""
    from secondthoughts.realign import Realigner

    return Realigner(run or model_path(args.model), device=args.device, dtype=torch_dtype(args.dtype))


def model_path(model: str | None) -> str:
    """``--model``, or the run shipped in the package when none is given."""
    from secondthoughts.realign import default_run

    if model:
        return model
    shipped = default_run()
    if shipped is None:
        raise FileNotFoundError("no --model given and no default run installed (secondthoughts/examples/default-run)")
    return str(shipped)


def show(console: Any, result: Any) -> None:
    """The terminal view of one result: inline diff, readable chain, notes."""
    from rich.markup import escape

    from secondthoughts.diffview import chain_stats, inline_diff
    from secondthoughts.edits import tokenize

    if result.context:
        console.print(f"[dim]context:[/dim] {escape(result.context)}")
    console.print(inline_diff(tokenize(result.source), result.chain))
    for n, line in enumerate(result.readable.splitlines()):
        mark = " [dim](your prefix)[/dim]" if n < result.prefix_edits else ""
        console.print(f"  {escape(line)}{mark}")
    if not result.valid:
        console.print(f"[red]invalid chain:[/red] {escape(result.error or '')}")
        console.print(f"[dim]model wrote:[/dim] {escape(result.compact)}")
    if result.truncated:
        console.print("[yellow]max-new-tokens cut the chain: kept its complete edits[/yellow]")
    console.print(f"[bold]text:[/bold] {escape(result.text)}")
    if result.candidates > 1:
        console.print(f"[dim]best of {result.candidates} chains, greedy and sampled (rerank score {result.rerank_score:.3f})[/dim]")
    if result.generated_target is not None:
        note = "[yellow](differs from the chain applied)[/yellow]" if result.disagrees else "[dim](same as the chain applied)[/dim]"
        console.print(f"[dim]generated target:[/dim] {escape(result.generated_target)} {note}")
    stats = chain_stats(result.chain)
    t = result.timings
    console.print(
        f"[dim]{len(result.chain)} edits ({stats['replace']} replace, {stats['delete']} delete, {stats['insert']} insert); "
        f"{t.get('total_s', 0):.2f} s, {int(t.get('new_tokens', 0))} new tokens[/dim]"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from secondthoughts.edits import EditError

    if (args.text is None) == (args.input is None):
        print("error: give either a TEXT or --input FILE", file=sys.stderr)
        return 2
    if args.input and not args.output:
        print("error: --input needs --output", file=sys.stderr)
        return 2
    try:
        items = read_items(args.input) if args.input else None
        check_best_of(args)
        realigner = load_realigner(args)
        best = best_of_settings(args)
        if items is None:
            result = realigner.realign(args.context, args.text, prefix=args.prefix, **settings(args), **best)
        else:
            t0 = time.perf_counter()
            results = realigner.realign_many(items, batch_size=args.batch_size, progress=True, **settings(args), **best)
            elapsed = time.perf_counter() - t0
    except (DataError, EditError, ValueError, FileNotFoundError, OSError) as e:
        from secondthoughts.cli import reraise_if_debugging

        reraise_if_debugging()
        print(f"error: {e}", file=sys.stderr)
        return 1
    if items is None:
        if args.json:
            print(json.dumps(result.to_dict(args.keep_candidates), ensure_ascii=False, indent=2))
        else:
            show(Console(highlight=False), result)
        return 0 if result.valid else 1
    from secondthoughts.commands.reward import write_rows

    write_rows(args.output, [{**row, **r.to_dict(args.keep_candidates)} for row, r in zip(items, results)])
    valid = sum(r.valid for r in results)
    parts = [f"{valid} valid", f"{sum(r.truncated for r in results)} truncated"]
    if any(r.disagrees is not None for r in results):
        parts.append(f"{sum(bool(r.disagrees) for r in results)} with a target that differs from the chain applied")
    rate = f" ({len(results) / elapsed:.2f} texts/s)" if results and elapsed > 0 else ""
    print(f"re-aligned {len(results)} texts{rate}: {', '.join(parts)}; wrote {args.output}")
    return 0 if valid == len(results) else 1
