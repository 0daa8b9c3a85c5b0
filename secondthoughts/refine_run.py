"""The refinement run around a :class:`refine.Refiner`: each step samples its prompts (a pure
function of seed and step, so a resumed run samples what the uninterrupted one would have),
rolls out, scores and updates; metrics (with the reward-hacking guards) go to metrics.jsonl,
held-out evaluations at ``eval_every``, checkpoints through ``runs``."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secondthoughts import atomic, models, plots, runs
from secondthoughts.data import read_run_examples
from secondthoughts.policy import save_policy
from secondthoughts.refine import GUARDS, RefineResult, RefineState, Refiner


def _per_sample(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    n, nv = max(sums["n"], 1), max(sums["n_valid"], 1)
    return {
        f"{prefix}reward": sums["reward"] / n,
        f"{prefix}score": sums["score"] / nv,  # mean alignment score of valid texts
        f"{prefix}valid": sums["n_valid"] / n,
        **{f"{prefix}{k}": sums[k] / nv for k in (*GUARDS, "coherence", "alignment") if k in sums},  # shares of valid texts
        f"{prefix}edits": sums["edits"] / nv,
        f"{prefix}new_tokens": sums["new_tokens"] / n,
    }


def _reduce(accelerator: Any, d: dict[str, float], op: str = "sum") -> dict[str, float]:
    if accelerator.num_processes == 1:
        return d
    keys = sorted(d)
    t = accelerator.reduce(torch.tensor([d[k] for k in keys], dtype=torch.float64, device=accelerator.device), op)
    return dict(zip(keys, t.tolist()))


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Sampling at step s depends only on (seed, s, rank): a resumed run samples what the
    # uninterrupted one would have.
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _step_prompts(examples: list[Any], seed: int, step: int, steps_per_epoch: int, per_step: int) -> list[Any]:
    """The prompts of a step, all processes': the step's slice of its epoch's order
    (``runs.epoch_order``), wrapping around at the epoch's end."""
    epoch, index = divmod(step, steps_per_epoch)
    order = runs.epoch_order(len(examples), seed, epoch)
    return [examples[order[(index * per_step + j) % len(order)]] for j in range(per_step)]


def _step(r: Refiner, mine: list[Any], state: RefineState) -> dict[str, Any]:
    """One step on this process's prompts ``mine``: rollout, score, update; ``state`` advanced;
    the step's metrics row (summed over processes)."""
    cfg, acc = r.config, r.accelerator
    t0 = time.perf_counter()
    batch = r.rollout(mine, seed=_step_seed(cfg.seed, state.step, acc.process_index))
    t1 = time.perf_counter()
    r.score(batch)
    t2 = time.perf_counter()
    upd = r.update(batch)
    t3 = time.perf_counter()
    sums = _reduce(acc, r.step_stats(batch))
    upd = {key: v / acc.num_processes for key, v in _reduce(acc, upd).items()}
    dt = t3 - t0
    state.step += 1
    state.samples += int(sums["n"])
    state.elapsed_s += dt
    row = {
        "step": state.step, **_per_sample(sums), **upd, "lr": r.scheduler.get_last_lr()[0],
        "samples_per_s": sums["n"] / dt, "rollout_s": t1 - t0, "score_s": t2 - t1, "update_s": t3 - t2,
        "elapsed_s": round(state.elapsed_s, 3), "peak_memory_mb": runs.peak_memory_mb(),
    }  # fmt: skip
    errors = [e for e in batch.errors if e][:3]
    if errors:
        row["invalid_examples"] = errors  # this process's first few, so a failure mode is readable
    return row


def _run_info(r: Refiner, data: dict[str, int], plan: dict[str, int]) -> dict[str, Any]:
    """config.json of a refinement run (see the ``refine`` module docstring)."""
    cfg = r.config
    return {
        "train": r.aem_info or {"mode": "coe"},
        "refine": asdict(cfg),
        "policy": {"source": cfg.policy, "aem_lora_base": r.aem.base if r.aem else None, "reference": "frozen copy" if r.reference is not None else "adapter disabled"},
        "data": data,
        "plan": plan,
        "model": dict(zip(("trainable_parameters", "parameters"), models.count_parameters(r.policy))),
        "env": runs.environment(),
    }  # fmt: skip


def run(r: Refiner, *, resume: bool, stop_after: int | None) -> RefineResult:
    """``Refiner.train``: see the module docstring of ``refine`` for the run folder."""
    from tqdm.auto import tqdm

    cfg, acc = r.config, r.accelerator
    out = Path(cfg.out)
    main, world, rank = acc.is_main_process, acc.num_processes, acc.process_index
    ckpt = runs.run_start(out, resume)  # the verified checkpoint, or None for a new run
    if resume:
        runs.check_same_settings(out, "refine", cfg)
    acc.wait_for_everyone()  # every process has checked the folder before the main one writes to it

    train_ex, eval_ex = read_run_examples(cfg.data, cfg.eval_data, cfg.eval_max, "prompts")
    per_step = cfg.prompts_per_step * world
    steps_per_epoch = max(1, math.ceil(len(train_ex) / per_step))
    plan = {"world_size": world, "prompts_per_step": per_step, "samples_per_step": per_step * cfg.k, "steps_per_epoch": steps_per_epoch}
    data = {"train_examples": len(train_ex), "eval_examples": len(eval_ex)}
    saved = runs.begin_training(out, ckpt, (r.policy, r.optimizer, r.scheduler), world, rank, main, lambda: _run_info(r, data, plan), cfg.steps)
    state = RefineState(**saved) if saved is not None else RefineState()
    if saved is None:  # sampling is seeded per step (_step_seed); these seed the rest
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
    acc.wait_for_everyone()
    history: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        history.append(row)
        if main:
            runs.append_jsonl(out / "metrics.jsonl", row)

    def run_eval() -> None:
        if not eval_ex:
            return
        mine = eval_ex[rank::world]
        sums = _reduce(acc, r.evaluate(mine) if mine else dict.fromkeys(("n", "n_valid", "reward", "score", *GUARDS, "edits", "new_tokens"), 0.0))
        log({"step": state.step, **_per_sample(sums, "eval_"), "peak_memory_mb": runs.peak_memory_mb()})

    def save_checkpoint() -> None:
        runs.save_training(out, acc, r.policy, r.optimizer, r.scheduler, asdict(state))
        if main:
            plots.reward_curve(out)

    if state.step == 0:
        run_eval()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not (main and cfg.progress), desc="refine", dynamic_ncols=True)
    while state.step < cfg.steps:
        chosen = _step_prompts(train_ex, cfg.seed, state.step, steps_per_epoch, per_step)
        row = _step(r, chosen[rank * cfg.prompts_per_step : (rank + 1) * cfg.prompts_per_step], state)
        log(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}", valid=f"{row['valid']:.2f}", ident=f"{row['identical']:.2f}")
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
            run_eval()
        if state.step == cfg.steps:
            run_eval()
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint()
        if stop_after is not None and state.step >= stop_after:
            break
    bar.close()
    if state.step >= cfg.steps and main:
        how: list[str] = []
        atomic.write_dir(out / "model", lambda p: how.append(save_policy(r.policy, r.tokenizer, p, r.aem, cfg.policy)))
        plots.reward_curve(out)
        print(f"{out / 'model'}: {how[0]}", flush=True)
    acc.wait_for_everyone()
    return RefineResult(out, state, history, main)
