"""Does ``torch.compile`` speed up a training pass? Eager against compiled (inductor), in one run.

    python benchmarks/bench_compile.py [--repeat 6]

One pass = forward and backward of ``completion_loss.CompletionLoss`` over the default training
model (the embedded SmolLM2-135M with the LoRA adapter ``train`` builds) on 2 packed rows of 256
positions, as ``train --rows-per-pass 2`` runs them. Prints the compile time and the median
seconds per pass of each, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from secondthoughts.completion_loss import CompletionLoss
from secondthoughts.sft import TrainConfig, build_model


def seconds_per_pass(f: torch.nn.Module, batch: dict[str, torch.Tensor], repeat: int) -> tuple[float, float]:
    """The first pass's seconds (a compile happens there) and the median of the next ``repeat``."""
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        f(**batch).backward()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _, _ = build_model(TrainConfig(data="unused", out="unused"))
    loss = CompletionLoss(model).train()
    ids = torch.randint(0, 40000, (2, 256))
    pos = torch.arange(256).repeat(2, 1)
    pos[:, 128:] -= 128  # two packed sequences per row
    labels = ids.clone()
    labels[:, :80] = labels[:, 128:200] = -100  # loss on the completions only
    batch = {"input_ids": ids, "position_ids": pos, "labels": labels}
    _, eager = seconds_per_pass(loss, batch, args.repeat)
    first, compiled = seconds_per_pass(torch.compile(loss, dynamic=False), batch, args.repeat)
    print(f"eager {eager:.2f} s/pass; compiled {compiled:.2f} s/pass after a {first:.0f} s first pass; eager / compiled = {eager / compiled:.2f}x")


if __name__ == "__main__":
    main()
