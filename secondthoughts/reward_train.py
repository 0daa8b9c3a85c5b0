"""Training a reward model (``secondthoughts reward train``): a cross-entropy per text plus a
pairwise (Bradley-Terry) term per example, fine-tuning the encoder (``head="finetune"``, AdamW)
or fitting a logistic regression on frozen embeddings (``head="frozen"``, full-batch L-BFGS)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from secondthoughts.data import Example
from secondthoughts.reward import (
    ALIGNED,
    PAIR_KINDS,
    UNALIGNED,
    RewardConfig,
    RewardModel,
    grouped_batches,
    progress_bar,
)
from secondthoughts.reward_data import Item, kind_counts, labelled_texts, training_items


def reward_loss(logits: torch.Tensor, items: Sequence[Item], pairwise_weight: float = 1.0,
                pair: tuple[str, str] = ("target", "source")) -> torch.Tensor:
    """Cross-entropy per text, plus ``pairwise_weight`` times the Bradley-Terry loss
    ``-log sigmoid(m_high - m_low)`` (``m``: log-odds of label 1) of each example whose texts of
    both kinds in ``pair`` are among ``items``: for alignment the target above its source, the
    ranking the RL stage relies on, trained directly."""
    labels = torch.tensor([it.label for it in items], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if pairwise_weight:
        high, low = pair
        where = {(it.example, it.kind): i for i, it in enumerate(items)}
        pairs = [(where[e, high], where[e, low]) for e in dict.fromkeys(it.example for it in items)
                 if (e, high) in where and (e, low) in where]
        if pairs:
            t, s = torch.tensor(pairs, device=logits.device).T
            margin = logits[:, ALIGNED] - logits[:, UNALIGNED]
            loss = loss + pairwise_weight * F.softplus(margin[s] - margin[t]).mean()
    return loss


def train(config: RewardConfig, examples: Sequence[Example], *, progress: bool = True,
          device: torch.device | str | None = None) -> tuple[RewardModel, dict[str, Any]]:
    """Build a model from ``config.backbone`` and fit it; returns it with training statistics
    (``texts``, ``targets``, ``sources``, ``hard_negatives``: texts trained on, over all epochs)."""
    if not examples:
        raise ValueError("no training examples")
    rm = RewardModel.create(config, device=device)
    fit = _fit_finetune if config.head == "finetune" else _fit_frozen
    with torch.random.fork_rng():  # dropout is seeded from the config, not from (or into) the caller's state
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)  # hard negatives and data order
        stats = fit(rm, examples, generator, progress)
    rm.encoder.eval()
    return rm, {"examples": len(examples), **stats}


def _fit_finetune(rm: RewardModel, examples: Sequence[Example], gen: torch.Generator, progress: bool) -> dict[str, Any]:
    from transformers import get_linear_schedule_with_warmup

    cfg, model = rm.config, rm.encoder
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases and LayerNorm weights
    decay = [p for p in model.parameters() if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    groups = len(examples) + len(labelled_texts(cfg))  # an example's texts, or one labelled text and its repeats
    total = cfg.epochs * math.ceil(groups / cfg.batch_size)  # grouped_batches makes exactly this many
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    counts: Counter[str] = Counter()
    running = None
    model.train()
    bar = progress_bar(None, progress, log=True, total=total, desc="train reward", unit="step")
    for _ in range(cfg.epochs):
        # Each epoch draws its own hard negatives; batches hold whole examples so that the
        # pairwise loss sees each target beside its source.
        items = training_items(cfg, examples, gen)
        counts.update(kind_counts(items))
        enc = rm.encode([it.context for it in items], [it.text for it in items])
        rows: list[list[int]] = [[] for _ in range(groups)]
        for i, it in enumerate(items):
            rows[it.example].append(i)
        lengths = [sum(len(enc["input_ids"][i]) for i in row) for row in rows]
        for batch in grouped_batches(lengths, cfg.batch_size, gen):
            idx = [i for e in batch for i in rows[e]]
            loss = reward_loss(rm.class_logits(rm.pad_rows(enc, idx)), [items[i] for i in idx], cfg.pairwise_weight, PAIR_KINDS[cfg.objective])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.update(1)
            if bar.n % 10 == 0:
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)  # refresh=True would print past mininterval
    bar.close()
    model.eval()
    return {"texts": sum(counts.values()), **counts, "steps": total, "final_loss_ema": running}


def _fit_frozen(rm: RewardModel, examples: Sequence[Example], gen: torch.Generator, progress: bool) -> dict[str, Any]:
    assert rm.head is not None
    cfg, head = rm.config, rm.head
    items = training_items(cfg, examples, gen)
    with torch.inference_mode():
        feats = rm.features([it.context for it in items], [it.text for it in items], progress)
    feats = feats.clone()  # inference tensors cannot take part in autograd
    # Full-batch L-BFGS: logistic regression is convex, so this is deterministic and needs no lr.
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=cfg.max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = reward_loss(head(feats), items, cfg.pairwise_weight, PAIR_KINDS[cfg.objective]) + cfg.l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = reward_loss(head(feats), items, cfg.pairwise_weight, PAIR_KINDS[cfg.objective]).item()
    return {"texts": len(items), **kind_counts(items), "final_loss": final}
