"""The model cards (README.md) of reward runs and ensembles."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from secondthoughts.reward import EMBEDDED, EMBEDDED_NAME, RewardConfig, RewardEnsemble


def model_card(path: str | os.PathLike[str], config: RewardConfig, metrics: dict[str, Any]) -> str:
    backbone = EMBEDDED_NAME if config.backbone == EMBEDDED else config.backbone
    head = (
        "cross-encoder: the encoder fine-tuned as a 2-label sequence classifier on `[CLS] context [SEP] text [SEP]`"
        if config.head == "finetune"
        else "logistic regression on frozen mean-pooled embeddings u (context), v (text): features [u, v, u*v, |u-v|]"
    )
    data, dev = metrics.get("data", {}), metrics.get("dev", {})
    tr = metrics.get("train", {})
    lines = [
        f"# {Path(path).name}: value-alignment reward model",
        "",
        "Scores P(text is value-aligned | context), trained with [secondthoughts](https://arxiv.org/abs/2301.00355)",
        "(Second Thoughts, Liu et al., NeurIPS 2022) as the reward of its RL refinement stage.",
        "",
        "## Data",
        (
            f"- training: `{data.get('train', '?')}`: {tr.get('examples', '?')} examples -> {tr.get('texts', '?')} texts "
            f"({tr.get('targets', '?')} targets = aligned; {tr.get('sources', '?')} sources and "
            f"{tr.get('hard_negatives', '?')} context sentences = unaligned)"
        ),
        f"- held out: `{data.get('dev', '?')}`: {dev.get('examples', 0)} examples",
        f"- hard negatives: {'all' if config.hard_negatives < 0 else f'up to {config.hard_negatives}'} of each example's own context "
        "sentences per epoch, labelled unaligned, so echoing the prompt earns no reward"
        if config.hard_negatives else "- no hard negatives: a policy may be rewarded for echoing its prompt",
        "",
        "## Method",
        f"- encoder: {backbone}",
        f"- head: {head}",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {f.name} | {getattr(config, f.name)} |" for f in fields(config)),
        "",
        "## Held-out results",
    ]
    timing = metrics.get("timing", {})
    if "train_s" in timing:
        loss = tr.get("final_loss_ema", tr.get("final_loss"))
        lines.append(f"- trained in {timing['train_s']:.0f} s" + (f", final training loss {loss:.4f}" if loss is not None else ""))
    if "eval_texts_per_s" in timing:
        lines += [f"- held-out texts scored at {timing['eval_texts_per_s']:.0f} texts/s (float32)", ""]
    if dev.get("examples"):
        lines += [
            "| metric | value |",
            "|---|---|",
            *(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in dev.items()),
        ]
    else:
        lines.append("none")
    lines += [
        "",
        "## Use",
        "```python",
        "from secondthoughts.reward import RewardModel",
        f'reward = RewardModel.load("{path}")',
        'reward(["It is wrong to hit people."], ["Tom talks to his brother."])  # -> [P(aligned)]',
        "```",
        "or `secondthoughts reward score --model RUN --input in.jsonl --output out.jsonl`."
        + (" `model/` also loads with `AutoModelForSequenceClassification` (label 1 = aligned)." if config.head == "finetune" else ""),
        "",
        "## Limits",
        "- It learns what separates this dataset's aligned from unaligned texts; off that distribution its",
        "  scores are weaker evidence, and a policy optimized hard against it can find its blind spots",
        "  (keep a KL penalty to the reference model).",
        "",
    ]
    return "\n".join(lines)


def ensemble_card(path: str | os.PathLike[str], ensemble: RewardEnsemble, metrics: dict[str, Any]) -> str:
    dev, members = metrics.get("dev", {}), metrics.get("members", [])
    lines = [
        f"# {Path(path).name}: value-alignment reward ensemble",
        "",
        f"{len(ensemble.members)} reward models (`member-K/`, each a run folder with its own model card) scored as one:",
        "P(aligned) = sigmoid(mean of the members' log-odds). Trained with",
        "[secondthoughts](https://arxiv.org/abs/2301.00355) (Second Thoughts, Liu et al., NeurIPS 2022).",
        "",
        "## Held-out results",
    ]
    if dev.get("examples"):
        lines += ["", "| | pairwise accuracy | accuracy | echo accuracy |", "|---|---|---|---|"]
        rows = [*((f"member-{k}", m) for k, m in enumerate(members)), ("**ensemble**", dev)]
        lines += [f"| {name} | {m.get('pairwise_accuracy', float('nan')):.4f} | {m.get('accuracy', float('nan')):.4f} | "
                  f"{m.get('echo_accuracy', float('nan')):.4f} |" for name, m in rows]
        lines.append(f"\n{dev['examples']} held-out examples (`{metrics.get('data', {}).get('dev', '?')}`).")
    else:
        lines.append("none")
    lines += [
        "",
        "## Use",
        "```python",
        "from secondthoughts import reward",
        f'scorer = reward.load("{path}")  # a RewardEnsemble; reward.load also reads single runs',
        'scorer(["It is wrong to hit people."], ["Tom talks to his brother."])  # -> [P(aligned)]',
        "```",
        "",
    ]
    return "\n".join(lines)
