"""Refinement-step throughput: our loop (``refine.Refiner``: rollout + score + update) against TRL's
``RLOOTrainer`` with the same model, batch, k, lengths and reward callable, in one run.

    python benchmarks/bench_rl.py [--policy RUN] [--steps 3] [--warmup 1] [--prompts 8] [--k 4]
                                  [--max-new-tokens 48] [--reward RUN|module:function] [--unconstrained]

Model: an AEM run (``--policy``), or by default the embedded SmolLM2-135M-Instruct with the edit
tokens added (a stand-in AEM run: a zero LoRA, so the weights are the base). Both sides merge it,
train a fresh LoRA (r=16, alpha 32, all linear projections, no dropout, token rows not trained:
TRL cannot train PEFT's trainable-token rows of a tied head), use the adapter-disabled model as
the KL reference with beta 0.05, sample ``--k`` completions for each of ``--prompts`` Moral
Stories prompts (``context<|src|>source<|sep|>``) at temperature 1 with at most
``--max-new-tokens`` tokens, stopping at ``<|eoc|>`` or EOS, one update per batch, fp32 on CPU,
no activation checkpointing. Reward: the same callable on both sides (default a cheap word count,
so the RL machinery is what is timed; ``--reward runs/reward-ms`` adds the reward model).

Ours also decodes under the chain constraint (unless ``--unconstrained``), applies each chain,
logs the reward-hacking guards and computes the AIL hinge (one more forward row per prompt); TRL
does none of these. Chains end at different lengths on the two sides, so tokens per sample are
printed beside samples/s. Timing: wall time of whole steps after ``--warmup`` steps. Goal:
ours >= 1.0x TRL's samples/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/moral_stories/moral_stories.jsonl"
BETA, LR, LORA_R, LORA_ALPHA = 0.05, 1e-5, 16, 32


def word_reward(contexts: list[str], texts: list[str]) -> list[float]:
    """Cheap stand-in reward: share of distinct words, a float in [0, 1]."""
    out = []
    for t in texts:
        words = t.lower().split()
        out.append(len(set(words)) / max(len(words), 1))
    return out


def load_examples(path: Path, n: int) -> list[Any]:
    from secondthoughts.dataset_readers import read_dataset

    if not path.exists():
        sys.exit(f"{path} not found: put the shared data beside the project (see ../shared/data/README.md)")
    return read_dataset("moral_stories", path, split="train", limit=n).examples


def stand_in_aem(tmp: Path) -> Path:
    """The embedded model with edit tokens as an AEM run folder (zero LoRA: base weights)."""
    import torch

    from secondthoughts import models

    model, tok = models.load("embedded", dtype=torch.float32, device="cpu")
    ids = models.add_edit_tokens(model, tok)
    peft = models.apply_lora(model, ids, r=LORA_R, alpha=LORA_ALPHA, dropout=0.0)
    for cfg in peft.peft_config.values():
        cfg.base_model_name_or_path = "embedded"
    run = tmp / "aem"
    peft.save_pretrained(run / "model", save_embedding_layers=False)
    tok.save_pretrained(run / "model")
    (run / "metrics.jsonl").write_text("")
    (run / "config.json").write_text(json.dumps({"train": {"mode": "coe", "max_length": 256}}))
    return run


def run_ours(args: argparse.Namespace, policy: str, examples: list[Any], reward: Any, tmp: Path) -> dict[str, Any]:
    from secondthoughts.refine import RefineConfig, Refiner

    cfg = RefineConfig(
        policy=policy, reward="(callable)", data="(in memory)", out=str(tmp / "ours"), prompts_per_step=args.prompts, k=args.k,
        max_new_tokens=args.max_new_tokens, constrained=not args.unconstrained, beta=BETA, lr=LR, lora_r=LORA_R,
        lora_alpha=LORA_ALPHA, train_tokens=False, progress=False, gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip
    r = Refiner(cfg, reward)
    peaks = measure_phases(r) if args.phases else None
    times, tokens, valid = [], [], []
    for step in range(args.warmup + args.steps):
        batch_ex = [examples[(step * args.prompts + j) % len(examples)] for j in range(args.prompts)]
        t0 = time.perf_counter()
        batch = r.rollout(batch_ex, seed=step)
        r.score(batch)
        r.update(batch)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
            tokens.append(sum(map(len, batch.completion_ids)) / len(batch))
            valid.append(sum(batch.valid) / len(batch))
    n = args.prompts * args.k
    out = {"samples_per_s": n * len(times) / sum(times), "step_s": sum(times) / len(times), "tokens_per_sample": sum(tokens) / len(tokens), "valid": sum(valid) / len(valid)}
    if peaks is not None:
        out["phases"] = peaks.table(f"ours, {args.prompts} prompts x {args.k} samples: phase")
        out["peak_mb"] = peaks.overall
    return out


def measure_phases(r: Any) -> Any:
    """Instrument a Refiner: every call of each phase of a step is measured (``PhasePeaks``).
    The AIL rows (expert chains) are built in their own phase, and their forward and backward
    run inside the policy phases, beside the samples'."""
    from bench_train import PhasePeaks

    from secondthoughts import constraint_sets, refine

    peaks = PhasePeaks()
    for owner, attr, name in (
        (refine.Refiner, "rollout", "rollout (generate k chains per prompt)"),
        (refine.Refiner, "score", "score (reward callable)"),
        (refine.Refiner, "update", "update (everything below)"),
        (refine.Refiner, "ail_rows", "AIL rows (expert chains, tokenized)"),
        (constraint_sets, "completion_masks", "constraint masks (allowed tokens per position, dense)"),
        (constraint_sets, "completion_sets", "constraint sets (allowed tokens per position, index sets)"),
        (refine.Refiner, "reference_logprobs", "reference log-probs (no grad)"),
        (r, "ddp", "policy log-probs (forward with grad, samples + AIL rows)"),
        (r.accelerator, "backward", "backward"),
        (r.optimizer, "step", "optimizer step"),
    ):  # fmt: skip
        if hasattr(owner, attr):
            peaks.wrap(owner, attr, name)
    return peaks


def run_trl(args: argparse.Namespace, policy: str, examples: list[Any], reward: Any, tmp: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from secondthoughts import models
    from secondthoughts.models import SEP, SRC

    model, tok = models.load(policy, dtype=torch.float32, device="cpu")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tok.padding_side = "left"
    eoc = tok.convert_tokens_to_ids("<|eoc|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, eoc]  # stop where ours stops
    rows = [{"prompt": f"{ex.context}{SRC}{ex.source}{SEP}"} for ex in examples]
    n = args.prompts * args.k

    def trl_reward(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        return reward(["" for _ in prompts], completions)

    ends: list[tuple[float, int]] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            ends.append((time.perf_counter(), state.global_step))

        def on_log(self, a: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    cfg = RLOOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=n, num_generations=args.k, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=BETA, num_iterations=1, learning_rate=LR, max_steps=args.warmup + args.steps,
        gradient_checkpointing=False, bf16=False, use_cpu=not torch.cuda.is_available(), disable_dropout=True, logging_steps=1,
        save_strategy="no", report_to=[], log_completions=False, seed=0, dataloader_num_workers=0, shuffle_dataset=False,
    )  # fmt: skip
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RLOOTrainer(model=model, reward_funcs=trl_reward, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora, callbacks=[Timer()])
    start = time.perf_counter()
    trainer.train()
    marks = [start] + [t for t, _ in ends]
    times = [b - a for a, b in itertools.pairwise(marks)][args.warmup :]
    return {"samples_per_s": n * len(times) / sum(times), "step_s": sum(times) / len(times), "tokens_per_sample": sum(lengths[args.warmup :]) / max(len(lengths[args.warmup :]), 1), "valid": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="an AEM run folder (default: the embedded model with edit tokens)")
    ap.add_argument("--reward", help="a reward run folder or module:function (default: a cheap word-count reward)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Moral Stories JSONL")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="completion budget")
    ap.add_argument("--unconstrained", action="store_true", help="ours without the chain constraint")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="ours: recompute layer activations in the update's backward (refine's default; less memory, ~0.8x speed)")
    ap.add_argument("--phases", action="store_true", help="print ours' peak memory per phase (RSS high-water mark on CPU)")
    ap.add_argument("--skip-trl", action="store_true", help="run ours only (for --phases: TRL's run would share the process)")
    args = ap.parse_args()

    from secondthoughts.refine import load_reward

    examples = load_examples(args.data, args.prompts * (args.warmup + args.steps))
    reward = load_reward(args.reward) if args.reward else word_reward
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy = args.policy or str(stand_in_aem(tmp))
        ours = run_ours(args, policy, examples, reward, tmp)
        trl = None if args.skip_trl else run_trl(args, policy, examples, reward, tmp)
    print(f"\n{args.prompts} prompts x {args.k} samples, max {args.max_new_tokens} new tokens, {args.steps} timed steps after {args.warmup}")
    print("| loop | samples/s | s/step | tokens/sample | valid chains |")
    print("|---|---|---|---|---|")
    sides = [("TRL RLOOTrainer", trl)] if trl else []
    for name, r in (*sides, ("secondthoughts refine" + (" (unconstrained)" if args.unconstrained else ""), ours)):
        print(f"| {name} | {r['samples_per_s']:.2f} | {r['step_s']:.2f} | {r['tokens_per_sample']:.1f} | {r['valid']:.2f} |")
    if trl:
        print(f"ratio (ours / TRL samples/s): {ours['samples_per_s'] / trl['samples_per_s']:.2f}x")
    if "phases" in ours:
        print(f"\n{ours['phases']}")


if __name__ == "__main__":
    main()
