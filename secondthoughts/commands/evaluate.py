"""``secondthoughts evaluate``: re-align a test set and report alignment, fluency, faithfulness,
edit behaviour and speed.

    secondthoughts evaluate --model RUN --data test.jsonl [--reward RUN] [--limit N]
        [--mode apply|generate|direct] [--batch-size B] [--base-lm NAME] --out report/

``--data`` holds normalized examples (``secondthoughts prepare`` writes them). The report folder
gets ``report.md``, ``metrics.json``, ``outputs.jsonl``, ``alignment.png`` and
``chain_lengths.png``, written atomically (see :mod:`secondthoughts.evaluate`).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from typing import Any

from secondthoughts.commands.realign import add_decoding_arguments, add_dtype_argument, best_of_settings, check_best_of, torch_dtype

# The decoding flags evaluate takes (its --seed is the bootstrap's; it decodes in batches, greedy or best-of).
DECODING = ("mode", "constrained", "num_beams", "temperature", "max_new_tokens", "no_repeat", "best_of", "rerank", "coherence_weight")

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--data",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a `secondthoughts train` run folder (or a model folder with edit tokens)")
    p.add_argument("--data", required=True, help="examples JSONL with context, source, target (from `secondthoughts prepare`)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--reward", help="reward model run folder (`secondthoughts reward train`); without it alignment is not measured")
    p.add_argument("--second-reward", help="a second alignment scorer (run folder or module:function), reported beside the first")
    p.add_argument("--coherence", help="coherence scorer (a `reward fit-coherence` folder, a `reward train --objective coherence` run, "
                                       "or module:function); without it coherence is not measured")
    p.add_argument("--limit", type=int, help="evaluate the first N examples of --data")
    p.add_argument("--batch-size", type=int, default=8, help="texts per generation batch (default 8); with --best-of N it counts rows: a text takes N + 1, at least one text a batch")
    p.add_argument("--base-lm", help="model to measure fluency with (default: the run's base model: LoRA adapter disabled, or the model in its config.json)")
    p.add_argument("--score-generated", action="store_true",
                   help="with --mode generate: measure the target the model wrote after its chain (the paper's decoding), not the chain applied")
    add_decoding_arguments(p, DECODING)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--examples", type=int, default=6, help="example rows with inline diffs in report.md (default 6)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_dtype_argument(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")


def _summary(m: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the headline numbers and where the report is."""
    from secondthoughts.report import cell

    h = m["headline"]
    names = {"alignment": "alignment (outputs)", "alignment_second": "alignment, 2nd scorer", "coherence": "coherence (outputs)",
             "coherence_vs_gold": "coherence / gold's", "perplexity": "perplexity (outputs)", "rouge_l": "ROUGE-L", "bleu": "BLEU",
             "sari": "SARI", "valid": "valid chains"}
    return [f"  {names[k]:<22} {cell(v, 3)}" for k, v in h.items()]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from secondthoughts.data import DataError, read_examples
    from secondthoughts.edits import EditError

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.bootstrap < 0:
        print("error: --batch-size must be >= 1 and --bootstrap >= 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before the slow part, not after it
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        import torch

        from secondthoughts.evaluate import evaluate_run, write_report

        examples = list(islice(read_examples(args.data), args.limit))
        if not examples:
            raise DataError(f"{args.data}: no examples")
        check_best_of(args)
        from secondthoughts.reward import check_scorer

        for flag, spec in (("--reward", args.reward), ("--second-reward", args.second_reward), ("--coherence", args.coherence)):
            if spec:
                check_scorer(spec, flag)
        dtype = torch_dtype(args.dtype)
        gen = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("num_beams", args.num_beams)) if v not in (None, 1)}
        gen["no_repeat"] = args.no_repeat
        if not args.constrained:
            gen["constrained"] = False
        if args.best_of > 1:
            gen.update(best_of_settings(args), temperature=args.temperature)
            torch.manual_seed(args.seed)  # the samples (evaluate's own seed is its bootstrap's)
        t0 = time.perf_counter()
        ev = evaluate_run(
            args.model, examples, reward_run=args.reward, second_reward_run=args.second_reward, coherence_run=args.coherence,
            base_lm=args.base_lm, device=args.device, dtype=dtype,
            mode=args.mode, score_generated=args.score_generated, batch_size=args.batch_size, resamples=args.bootstrap, seed=args.seed, progress=True,
            info={"data": str(args.data), "limit": args.limit, "constrained": args.constrained,
                  **({"rerank": args.rerank, "coherence_weight": args.coherence_weight} if args.best_of > 1 else {})}, **gen,
        )  # fmt: skip
        write_report(ev, out, shown=args.examples, overwrite=args.overwrite)
    except (DataError, EditError, ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        from secondthoughts.cli import reraise_if_debugging

        reraise_if_debugging()
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"evaluated {len(examples)} examples in {time.perf_counter() - t0:.1f} s ({ev.metrics['info']['mode']} mode):")
    print("\n".join(_summary(ev.metrics)))
    print(f"wrote {out}/report.md, metrics.json, outputs.jsonl and plots")
    return 0
