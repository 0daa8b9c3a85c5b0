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
from dataclasses import dataclass
from itertools import islice
from typing import Any

from secondthoughts.commands.realign import BATCH_HELP, DeviceOptions, best_of_settings, check_best_of, rerank_settings, torch_dtype
from secondthoughts.settings import Part, add_config_flag, add_parts, setting

# The decoding flags evaluate takes (its --seed is the bootstrap's; it decodes in batches, greedy or best-of).
DECODING = ("mode", "constrained", "num_beams", "temperature", "max_new_tokens", "no_repeat", "best_of", "rerank")  # and decoding.RERANK_SETTINGS

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--data",)


@dataclass
class EvaluateOptions:
    """``evaluate``'s own flags (the decoding ones: ``decoding.DecodeSettings``, those in ``DECODING``)."""

    model: str | None = setting(None, "a `secondthoughts train` run folder (or a model folder with edit tokens)", type=str, required=True)
    data: str | None = setting(None, "examples JSONL with context, source, target (from `secondthoughts prepare`)", type=str, required=True)
    out: str | None = setting(None, "report folder to write", type=str, required=True)
    reward: str | None = setting(None, "reward model run folder (`secondthoughts reward train`); without it alignment is not measured", type=str)
    second_reward: str | None = setting(None, "a second alignment scorer (run folder or module:function), reported beside the first", type=str)
    coherence: str | None = setting(None, "coherence scorer (a `reward fit-coherence` folder, a `reward train --objective coherence` run, "
                                          "or module:function); without it coherence is not measured", type=str)  # fmt: skip
    limit: int | None = setting(None, "evaluate the first N examples of --data", type=int)
    batch_size: int = setting(8, BATCH_HELP)
    base_lm: str | None = setting(None, "model to measure fluency with (default: the run's base model: LoRA adapter disabled, or the model in its config.json)", type=str)
    score_generated: bool = setting(False, "with --mode generate: measure the target the model wrote after its chain (the paper's decoding), not the chain applied",
                                    flag="--score-generated")  # fmt: skip
    bootstrap: int = setting(1000, "bootstrap resamples for the 95%% intervals (0: none)")
    seed: int = setting(0, "seed of the bootstrap resamples")
    examples: int = setting(6, "example rows with inline diffs in report.md")
    overwrite: bool = setting(False, "replace an existing report folder", flag="--overwrite")


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    from secondthoughts.decoding import RERANK_SETTINGS, DecodeSettings

    return [(EvaluateOptions, None), (DecodeSettings, (*DECODING, *RERANK_SETTINGS)), (DeviceOptions, None)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, "evaluate settings")
    add_parts(p, settings_parts())


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
                  **({"rerank": args.rerank, **rerank_settings(args)} if args.best_of > 1 else {})}, **gen,
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
