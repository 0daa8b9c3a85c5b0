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
from pathlib import Path
from typing import Any

from secondthoughts.data import DataError, RowError, jsonl_rows

OUTPUT_FLAGS = ("--output",)  # refused by cli.precheck when a folder, before the model loads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="the text to re-align (or --input)")
    p.add_argument("--model", help="a `secondthoughts train` run folder (or a model folder with edit tokens); default: the run shipped in the package")
    p.add_argument("--context", default="", help="the situation / norm the text responds to")
    p.add_argument("--prefix", help="first edits to force (compact form or readable lines); the model continues after them")
    p.add_argument("--mode", choices=("apply", "generate", "direct"), help="apply: chain only, applied (default for CoE runs); "
                   "generate: chain then target (the paper's decoding); direct: runs trained with --mode direct")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--input", help="JSONL of rows with source (and optional context, prefix) to re-align in batches")
    p.add_argument("--output", help="where --input's rows go, with the result fields added")
    p.add_argument("--batch-size", type=int, default=8, help="texts per generation batch (default 8)")
    p.add_argument("--unconstrained", action="store_true", help="let the model write chains that may not parse or apply")
    p.add_argument("--beams", type=int, default=1, help="beam search width (default 1: greedy or sampling)")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0: off)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: enough to rewrite every source token)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--prompt-lookup", type=int, metavar="N", help="draft N tokens at a time by copying from the prompt (batch size 1)")
    p.add_argument("--draft", choices=("auto", "chain", "none"), default="auto", help="chain: draft spans and positions from "
                   "the source, check them in one pass (greedy, one text at a time, same output); auto (default): chain for greedy apply mode at batch size 1")
    add_best_of_arguments(p)
    add_no_repeat_argument(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_dtype_argument(p)


# One meaning of --dtype auto per kind of command (docs/methods.md, "Precision"): commands that load a
# model to decode (realign, evaluate, serve) hold bf16 weights on a CUDA GPU with bf16, else fp32;
# training (train, refine) keeps fp32 weights and autocasts to bf16 on such a GPU.
DTYPE_HELP = "weights dtype: auto (bfloat16 on a CUDA GPU with bf16, else float32), float32, bfloat16 (default auto)"


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help=DTYPE_HELP)


def torch_dtype(name: str) -> Any:
    """``--dtype`` as a torch dtype; None for auto (``models.default_dtype`` decides by device)."""
    import torch

    return {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def add_best_of_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="sample N constrained chains per text (in one batch) and keep the one the --rerank scorers like best (default 1: no sampling)")
    p.add_argument("--rerank", nargs="+", default=[], metavar="SCORER",
                   help="scorers for --best-of: reward run folders (alignment or coherence, as each run's config says) or "
                        "module:function (alignment; write coherence=module:function for a coherence callable)")
    p.add_argument("--coherence-weight", type=float, default=1.0,
                   help="best-of score: log P(aligned) + W * log P(coherent) (default 1)")


def add_no_repeat_argument(p: argparse.ArgumentParser) -> None:
    from secondthoughts.decoding import NO_REPEAT

    p.add_argument("--no-repeat", type=int, default=NO_REPEAT, metavar="N",
                   help=f"the text a constrained chain writes never repeats one of its own N-token sequences (0: off; default {NO_REPEAT})")


def check_best_of(args: argparse.Namespace) -> None:
    """Fail before any model loads on a bad --best-of / --rerank."""
    if args.best_of < 1:
        raise ValueError(f"--best-of must be >= 1, got {args.best_of}")
    if args.best_of > 1:
        from secondthoughts.coherence import check_reranker

        check_reranker(args.rerank, args.coherence_weight)


def best_of_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``best_of`` and a loaded ``rerank`` for ``realign_many`` (``check_best_of`` first)."""
    if args.best_of == 1:
        return {}
    from secondthoughts.coherence import load_reranker

    return {"best_of": args.best_of, "rerank": load_reranker(args.rerank, args.coherence_weight)}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        mode=args.mode,
        constrained=not args.unconstrained,
        num_beams=args.beams,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        prompt_lookup_num_tokens=args.prompt_lookup,
        draft=args.draft,
        no_repeat=args.no_repeat,
    )


def read_items(path: str) -> list[dict[str, Any]]:
    """Rows with a string ``source``; ``context`` and ``prefix`` optional. Errors name file and line."""
    from secondthoughts.edits import EditError
    from secondthoughts.realign import as_chain

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
        console.print(f"[dim]best of {result.candidates} sampled chains (rerank score {result.rerank_score:.3f})[/dim]")
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
            print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        else:
            show(Console(highlight=False), result)
        return 0 if result.valid else 1
    from secondthoughts.commands.reward import write_rows

    write_rows(args.output, [{**row, **r.to_dict()} for row, r in zip(items, results)])
    valid = sum(r.valid for r in results)
    parts = [f"{valid} valid", f"{sum(r.truncated for r in results)} truncated"]
    if any(r.disagrees is not None for r in results):
        parts.append(f"{sum(bool(r.disagrees) for r in results)} with a target that differs from the chain applied")
    rate = f" ({len(results) / elapsed:.2f} texts/s)" if results and elapsed > 0 else ""
    print(f"re-aligned {len(results)} texts{rate}: {', '.join(parts)}; wrote {args.output}")
    return 0 if valid == len(results) else 1
