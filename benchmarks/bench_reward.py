"""Reward-model scoring speed: fine-tuned cross-encoder against the frozen-embedding head, in one run.

    python benchmarks/bench_reward.py [--finetune runs/reward-ms] [--frozen runs/reward-ms-frozen]
                                      [--data ../shared/data/moral_stories/moral_stories.jsonl] [--n 512]

Texts are Moral Stories dev actions in their context (norm + situation + intention), scored
with ``RewardModel.score`` (length-sorted batches, inference mode). Two workloads:

* ``pairs``: target and source of n/2 examples, so every context occurs twice (evaluation);
* ``distinct``: the targets of n examples, every context different (the frozen head's worst case:
  it must encode each context as well as each text).

Each model is timed with both ``views``: ``context`` (the pair) and ``context+alone`` (the pair
and the text alone, the lower log-odds), whatever its run folder says. Without a run folder a
variant is built untrained from the embedded encoder: its speed is the same. float32 is always
measured; bfloat16 too where the CPU has native bf16 instructions (or on CUDA), and int8 (Linear
layers quantized per channel) on CPU, each with the largest score difference to float32. Best of
``--repeat`` passes; the goal is at least 100 texts/s on CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from secondthoughts.dataset_readers import read_dataset
from secondthoughts.precision import cpu_has_native_bf16, to_precision
from secondthoughts.reward import HEADS, VIEWS, RewardConfig, RewardModel

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/moral_stories/moral_stories.jsonl"


def workloads(path: Path, n: int) -> dict[str, tuple[list[str], list[str]]]:
    if not path.exists():
        sys.exit(f"{path} not found: put the shared data beside the project (see ../shared/data/README.md)")
    examples = read_dataset("moral_stories", path, split="dev").examples[:n]
    half = examples[: n // 2]
    return {
        "pairs": ([e.context for e in half] * 2, [e.target for e in half] + [e.source for e in half]),
        "distinct": ([e.context for e in examples], [e.target for e in examples]),
    }


def model_for(head: str, run: str | None, precision: str, batch_size: int) -> RewardModel:
    if run:
        return RewardModel.load(run, dtype=precision, batch_size=batch_size)
    model = RewardModel.create(RewardConfig(head=head), batch_size=batch_size)
    model.encoder = to_precision(model.encoder, precision)
    return model


def with_views(model: RewardModel, views: str) -> RewardModel:
    return RewardModel(replace(model.config, views=views), model.encoder, model.tokenizer, model.head,
                       batch_size=model.batch_size, device=model.device)  # fmt: skip


def texts_per_s(model: RewardModel, contexts: list[str], texts: list[str], repeat: int) -> tuple[float, list[float]]:
    model(contexts[:8], texts[:8])  # warm-up: first-call allocations and kernel choices
    best, scores = float("inf"), []
    for _ in range(repeat):
        t = time.perf_counter()
        scores = model(contexts, texts)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetune", help="run folder of a fine-tuned (cross-encoder) reward model")
    ap.add_argument("--frozen", help="run folder of a frozen-embedding reward model")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="moral_stories.jsonl")
    ap.add_argument("--n", type=int, default=512, help="texts per workload")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    loads = workloads(args.data, args.n)
    precisions = ["float32"]
    if torch.cuda.is_available() or cpu_has_native_bf16():
        precisions.append("bfloat16")
    if not torch.cuda.is_available():
        precisions.append("int8")
    runs = {"finetune": args.finetune, "frozen": args.frozen}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; texts/s, best of {args.repeat}")
    print(f"{'head':<9} {'views':<14} {'dtype':<9} {'workload':<9} {'texts/s':>8} {'vs finetune fp32':>17} {'max |dp| vs fp32':>17}")
    baseline: dict[str, float] = {}
    for head in HEADS:
        reference: dict[tuple[str, str], list[float]] = {}
        for precision in precisions:
            loaded = model_for(head, runs[head], precision, args.batch_size)
            for views in VIEWS:
                model = with_views(loaded, views)
                for name, (contexts, texts) in loads.items():
                    rate, scores = texts_per_s(model, contexts, texts, args.repeat)
                    baseline.setdefault(name, rate)  # the first measured: finetune, context, float32
                    ref = reference.setdefault((views, name), scores)
                    diff = "" if precision == "float32" else f"{max(abs(a - b) for a, b in zip(scores, ref)):.4f}"
                    print(f"{head:<9} {views:<14} {precision:<9} {name:<9} {rate:>8.1f} {rate / baseline[name]:>16.2f}x {diff:>17}", flush=True)


if __name__ == "__main__":
    main()
