"""Training throughput and peak memory: our AEM loop (``sft.train``) vs TRL's SFTTrainer, in one run.

    python benchmarks/bench_train.py [--model embedded] [--steps 10] [--warmup 2] [--batch-size 8]
                                     [--max-length 256] [--examples 400]

Both train the same model (the embedded SmolLM2-135M-Instruct unless --model), with the same
edit tokens, LoRA (r=16, alpha 32, dropout 0.05, all linear projections; ours also trains the
new token rows, which TRL cannot, see run_trl), learning rate, fp32 weights on CPU, no activation checkpointing, on the same CoE
sequences from Moral Stories (``context<|src|>source<|sep|>`` prompt, chain + target completion,
loss on the completion only), ``--batch-size`` rows of at most ``--max-length`` tokens.
Ours packs sequences into rows; TRL pads each batch to its longest sequence (its default).

Throughput counts useful tokens only (prompt + completion, no padding) per second of optimizer
steps after ``--warmup`` steps. Each trainer runs in its own process, so each peak memory (max
RSS on CPU, max allocated on CUDA) is its own. Goal: ours >= 1.2x TRL's tokens/s, no more memory.

Ours runs twice: with the same ``--batch-size`` (its rows are full, TRL's padded to the batch's
longest sequence, so ours holds about twice the tokens per step and needs more activation
memory), and "matched": as many full rows as fit in the token positions of TRL's mean batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/moral_stories/moral_stories.jsonl"


def load_examples(path: Path, n: int) -> list[Any]:
    from secondthoughts.dataset_readers import read_dataset

    if not path.exists():
        sys.exit(f"{path} not found: put the shared data beside the project (see ../shared/data/README.md)")
    return read_dataset("moral_stories", path, split="train", limit=n).examples


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PhasePeaks:
    """Peak memory per phase of a run: on CPU the resident set's high-water mark (``VmHWM``,
    reset through ``/proc/self/clear_refs`` at each phase boundary), on CUDA max allocated.

    ``peak[name]``: the highest memory seen while the phase ran (MB, the whole process), and
    ``rise[name]``: that minus the memory at its start (what the phase itself added). Phases
    nest: an outer phase's peak includes its inner ones'. Resetting the high-water mark also
    resets ``ru_maxrss`` (and what ``/usr/bin/time`` reports), so ``overall`` keeps the
    process's peak instead; measure a command under ``/usr/bin/time`` without this.
    """

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.peak: dict[str, float] = {}
        self.rise: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._open: list[list[Any]] = []  # [name, memory at start, peak so far]
        self.overall = self._now()[0]

    def _now(self) -> tuple[float, float]:
        """(peak since the last reset, current) in MB."""
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20, torch.cuda.memory_allocated() / 2**20
        status = Path("/proc/self/status").read_text()
        hwm, rss = (int(status.split(f"{key}:")[1].split()[0]) / 1024 for key in ("VmHWM", "VmRSS"))
        return hwm, rss

    def _flush(self) -> float:
        """Credit the peak since the last reset to every open phase, reset; returns current."""
        top, now = self._now()
        self.overall = max(self.overall, top)
        for entry in self._open:
            entry[2] = max(entry[2], top)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        return now

    def phase(self, name: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def run() -> Any:
            now = self._flush()
            self.peak.setdefault(name, 0.0)  # the table lists phases in the order they first start
            self._open.append([name, now, now])
            try:
                yield
            finally:
                self._flush()
                _, start, top = self._open.pop()
                self.peak[name] = max(self.peak.get(name, 0.0), top)
                self.rise[name] = max(self.rise.get(name, 0.0), top - start)
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._open:
                    self._open[-1][2] = max(self._open[-1][2], top)

        return run()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Measure every call of ``owner.attr`` (a function on a class or module, or a bound
        method / callable on an instance) as phase ``name``."""
        import functools

        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def measured(*a: Any, **kw: Any) -> Any:
            with self.phase(name):
                return fn(*a, **kw)

        setattr(owner, attr, measured)

    def table(self, title: str) -> str:
        self._flush()
        unit = "max allocated" if self.cuda else "RSS"
        lines = [f"| {title} | calls | peak {unit} (MB) | rise over its start (MB) |", "|---|---|---|---|"]
        lines += [f"| {n} | {self.calls[n]} | {self.peak[n]:,.0f} | {self.rise[n]:,.0f} |" for n in self.peak]
        lines.append(f"| whole run | | {self.overall:,.0f} | |")
        return "\n".join(lines)


def run_ours(args: argparse.Namespace, examples: list[Any], tmp: Path) -> dict[str, Any]:
    from secondthoughts.data import write_examples
    from secondthoughts.sft import TrainConfig, train

    write_examples(tmp / "examples.jsonl", examples)
    cfg = TrainConfig(
        data=str(tmp / "examples.jsonl"),
        out=str(tmp / "run"),
        model=args.model,
        mode="coe",
        max_length=args.max_length,
        batch_size=args.rows or args.batch_size,
        max_steps=args.warmup + args.steps,
        eval_fraction=0.0,
        eval_every=10**9,  # no eval or checkpoint inside the timed steps
        log_every=1,
        warmup_ratio=0.0,
        lr=2e-4,
        progress=False,
        **({} if args.rows_per_pass is None else {"rows_per_pass": args.rows_per_pass}),
    )
    steps = [r for r in train(cfg).history if "loss" in r][args.warmup :]
    return {
        "tokens": sum(r["tokens_per_s"] * r["step_s"] for r in steps),
        "seconds": sum(r["step_s"] for r in steps),
        "steps": len(steps),
        "final_loss": steps[-1]["loss"],
        "slots_per_step": cfg.batch_size * cfg.max_length,
        "rows": cfg.batch_size,
        "rows_per_pass": cfg.rows_per_pass,
    }


def run_trl(args: argparse.Namespace, examples: list[Any], tmp: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from secondthoughts import models
    from secondthoughts.chain_text import render_compact
    from secondthoughts.edits import augment_chains, tokenize
    from secondthoughts.models import SEP, SRC

    model, tok = models.load(args.model, dtype=torch.float32)
    ids = models.add_edit_tokens(model, tok)
    torch.manual_seed(0)
    # No trainable token rows here: TRL 1.16's fused lm_head loss reads `lm_head.weight` and
    # `.bias` directly and fails on PEFT's trainable-tokens wrapper of a tied head
    # ("'TrainableTokensWrapper' object has no attribute 'bias'"). TRL thus does slightly less work.
    del ids
    model = models.apply_lora(model, (), r=16, alpha=32, dropout=0.05)
    rows = [
        {"prompt": f"{ex.context}{SRC}{ex.source}{SEP}", "completion": render_compact(chain, ex.source) + ex.target}
        for ex in examples
        for _, chain in augment_chains(tokenize(ex.source), tokenize(ex.target))
    ]
    ends: list[tuple[float, int]] = []  # (time, tokens seen) at each step end

    class Timer(TrainerCallback):
        # Step time = from one step end to the next, so batch fetching and collation count,
        # as they do in ours. Tokens are counted when a batch is fetched.
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            ends.append((time.perf_counter(), state.num_input_tokens_seen))

    cfg = SFTConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        completion_only_loss=True,
        packing=False,
        bf16=False,  # TRL defaults to bf16 and activation checkpointing; both off, as in ours
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Timer()])
    slots: list[int] = []  # token positions per batch, padding included
    collator = trainer.data_collator

    def counting_collator(features: Any) -> Any:
        batch = collator(features)
        slots.append(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting_collator  # the dataloader is built in train(), after this
    trainer.train()
    timed = range(args.warmup, len(ends))  # step i runs from ends[i - 1] to ends[i]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens": sum(ends[i][1] - ends[i - 1][1] for i in timed),
        "seconds": sum(ends[i][0] - ends[i - 1][0] for i in timed),
        "steps": len(timed),
        "final_loss": losses[-1] if losses else float("nan"),
        "slots_per_step": sum(slots) / len(slots),
        "rows": args.batch_size,
    }


def measure_phases(which: str) -> PhasePeaks:
    """Instrument one trainer's step: the forward with its loss, inside it the decoder (the
    transformer layers, same class on both sides), the backward and the optimizer step."""
    import torch
    from accelerate import Accelerator
    from transformers.models.llama.modeling_llama import LlamaModel

    peaks = PhasePeaks()
    if which == "ours":
        from secondthoughts.completion_loss import CompletionLoss

        peaks.wrap(CompletionLoss, "forward", "forward + loss (head on completion positions only)")
    else:
        from trl import SFTTrainer

        peaks.wrap(SFTTrainer, "compute_loss", "forward + loss (TRL compute_loss)")
    peaks.wrap(LlamaModel, "forward", "decoder forward (inside the above)")
    peaks.wrap(Accelerator, "backward", "backward")
    peaks.wrap(torch.optim.AdamW, "step", "optimizer step")
    return peaks


def child(args: argparse.Namespace) -> None:
    examples = load_examples(Path(args.data), args.examples)
    peaks = measure_phases(args.only)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if args.only == "ours" else run_trl)(args, examples, Path(tmp))
    result["phases"] = peaks.table("phase")
    # PhasePeaks resets the high-water mark that peak_memory_mb() reads: it keeps the peak itself.
    result["peak_mb"] = max(peaks.overall, peak_memory_mb())
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Moral Stories JSONL (read, never copied)")
    ap.add_argument("--examples", type=int, default=400, help="Moral Stories pairs to read (each gives 1-3 chains)")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rows-per-pass", type=int, default=None, help="ours: rows per forward and backward within a batch (default: train's)")
    ap.add_argument("--no-matched", action="store_true", help="skip the run of ours at TRL's token budget")
    ap.add_argument("--only", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1:
        ap.error("--warmup must be at least 1")
    if args.only:
        child(args)
        return

    from secondthoughts import models

    models.resolve(args.model)  # convert the embedded model once, outside the timings
    def run(which: str, rows: int = 0) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--only", which, "--rows", str(rows), *sys.argv[1:]]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{which} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(line[len("RESULT ") :])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        return r

    # TRL first: its mean padded batch sets the token budget of the matched run, where ours gets
    # as many full rows as fit in the positions TRL's batches hold (ours fills rows, TRL pads).
    trl = run("trl")
    matched_rows = max(1, int(trl["slots_per_step"] // args.max_length))
    results = {"trl": trl, "ours": run("ours")}
    if not args.no_matched:
        results["ours-matched"] = run("ours", matched_rows)

    print(f"model {args.model}, Moral Stories CoE ({args.examples} pairs), LoRA r=16, max length {args.max_length}, "
          f"{args.steps} timed steps after {args.warmup}; ours runs {results['ours']['rows_per_pass'] or 'all'} rows per forward and backward")  # fmt: skip
    print(f"{'trainer':<14}{'rows':>5}{'positions/step':>16}{'tokens/s':>10}{'tokens':>8}{'seconds':>9}{'peak MB':>9}{'last loss':>10}")
    for which, r in results.items():
        print(f"{which:<14}{r['rows']:>5}{r['slots_per_step']:>16.0f}{r['tokens_per_s']:>10.1f}{r['tokens']:>8.0f}"
              f"{r['seconds']:>9.1f}{r['peak_mb']:>9.0f}{r['final_loss']:>10.3f}")  # fmt: skip
    for which, r in results.items():
        print(f"\n{which} ({r['rows']} rows of at most {args.max_length}):\n{r['phases']}")
    print()
    for which in [w for w in ("ours", "ours-matched") if w in results]:
        speed = results[which]["tokens_per_s"] / trl["tokens_per_s"]
        memory = results[which]["peak_mb"] / trl["peak_mb"]
        print(f"{which} / TRL: {speed:.2f}x useful tokens/s (goal >= 1.5), {memory:.2f}x peak memory (goal <= 1.0)")


if __name__ == "__main__":
    main()
