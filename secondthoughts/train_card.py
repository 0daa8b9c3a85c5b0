"""The model card (README.md) of a ``secondthoughts train`` run, from its config.json,
metrics.jsonl and checkpoint state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from secondthoughts import atomic
from secondthoughts.plots import loss_curve, read_metrics
from secondthoughts.runs import find_checkpoint


def write_model_card(out: str | os.PathLike[str]) -> Path:
    """README.md from config.json, metrics.jsonl and the checkpoint state."""
    out = Path(out)
    info = json.loads((out / "config.json").read_text())
    cfg, data = info["train"], info["data"]
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "eval_loss" in r]
    steps = [r for r in rows if "loss" in r]
    ck = find_checkpoint(out)
    st = json.loads((ck / "state.json").read_text())["state"] if ck else {}
    loss_curve(out)
    method = (
        "chain-of-edits (AEM): `context <|src|> source <|sep|> chain target <eos>`"
        if cfg["mode"] == "coe"
        else "direct rewrite baseline: `context <|src|> source <|sep|> target <eos>`"
    )
    tuning = "full fine-tuning" if cfg["full"] else f"LoRA r={cfg['lora_r']} alpha={cfg['lora_alpha']} dropout={cfg['lora_dropout']} on all linear projections, new token rows trainable"
    lr = cfg["lr"] or (3e-5 if cfg["full"] else 2e-4)
    lines = [
        f"# {out.name}",
        "",
        "A causal LM fine-tuned with [secondthoughts](https://arxiv.org/abs/2301.00355) (Second Thoughts, Liu et al., NeurIPS 2022)",
        "to re-align value-unaligned text by writing the edits that make it value-aligned.",
        "",
        "## Data",
        f"- training data: `{cfg['data']}` ({data['train_examples']} examples -> {data['train_sequences']} sequences, {data['train_rows']} rows)",
        f"- eval: {data['eval_examples']} held-out examples ({data['eval_sequences']} sequences)" + (f" from `{cfg['eval_data']}`" if cfg["eval_data"] else ""),
        f"- over-long (max_length {cfg['max_length']}): context cut from the left in {data['length_report']['context_truncated']}, dropped {data['length_report']['dropped']}",
        "",
        "## Method",
        f"- base model: `{cfg['model']}`" + (f", continuing the trained run `{cfg['init_from']}`" if cfg.get("init_from") else ""),
        f"- format: {method}; loss only after `<|sep|>`",
        f"- augmentation: {cfg.get('chain_format', 'positional')} chains under cost sets {cfg['cost_sets']} (insert, delete, replace)"
        + (f", edits at most {cfg['merge_gap']} kept tokens apart merged" if cfg.get("merge_gap", -1) >= 0 else "")
        if cfg["mode"] == "coe"
        else "- augmentation: none",
        f"- {tuning}",
        "",
        "## Hyperparameters",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {cfg[k]} |" for k in ("epochs", "max_steps", "batch_size", "grad_accum", "max_length", "packing", "weight_decay", "warmup_ratio", "scheduler", "max_grad_norm", "eval_every", "patience", "seed")),
        f"| peak lr | {lr} |",
        f"| processes | {info['plan']['world_size']} |",
        "",
        "## Results",
        f"- steps: {st.get('step', '?')} of {info['plan']['total_steps']}" + (" (stopped early: eval loss plateaued)" if st.get("stopped_early") else ""),
        f"- best eval loss: {st['best_eval']:.4f} at step {st['best_step']} (this is the saved model)" if st.get("best_eval") is not None else "- no evaluation (the last model is saved)",
        f"- last train loss: {steps[-1]['loss']:.4f}" if steps else "- no train loss logged",
        f"- tokens trained on: {st.get('tokens', 0)} in {st.get('elapsed_s', 0):.0f} s",
        "",
        "![training and held-out loss](loss.png)",
        "",
        "| step | eval loss |",
        "|---|---|",
        *(f"| {r['step']} | {r['eval_loss']:.4f}{' (best)' if r['best'] else ''} |" for r in evals),
        "",
        "## Use",
        "```python",
        "from secondthoughts import models",
        f'model, tokenizer = models.load("{out}")',
        "```",
        "",
    ]
    path = out / "README.md"
    atomic.write_atomic(path, "\n".join(lines))
    return path
