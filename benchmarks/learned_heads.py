"""Rating heads (``secondthoughts.rating_heads``) trained on people's ratings of a model's own
best-of candidates; what they would choose against the best-of score and other heads; and
shipping them.

    python benchmarks/learned_heads.py train --candidates r18.jsonl r21.jsonl --split cands18-learn cands21 \\
        --labels benchmarks/coherence_labels.jsonl --out heads [--layers 24 --epochs 4 --lr 5e-4] [--skip-unrated] [--init HEADS]
    python benchmarks/learned_heads.py choose --heads heads --candidates r24.jsonl --split cands24 \\
        --labels benchmarks/coherence_labels.jsonl [--weights 0.25 0.5] [--top 5] [--penalties 0 0] [--against HEADS]
    python benchmarks/learned_heads.py ship --heads heads --card card.md   # -> secondthoughts/examples/rating-heads

``train``: each candidate is read as "CONTEXT\\nOriginal: SOURCE\\nRewrite: TEXT" and the tokenizer's
end-of-sequence token (``<|im_end|>``), and scored by a linear layer over that token's hidden state;
per story and scale, every pair of candidates rated at least one point apart adds -log
sigmoid(better - worse) (Bradley-Terry, as reward models are trained); AdamW, ``--per-step``
stories a step, the learning rate times min(1, step / (5% of the steps)) x (1 - step / steps). On a
GPU (bf16 autocast) when one is there; on a 24 GB CPU machine 24 layers need ``--per-step 1`` (8 ran
out of memory). ``choose``: each head's scores standardised within a story; prints the rated means
of what the best-of score (the likelihood minus the source and length penalties), the likelihood
alone (unless ``--penalties 0 0``), the heads alone, the commands' default choice (argmax of the
score + WA x align head + WC x coherence head: ``rating_heads.heads_added``) and the heads among the
score's top ``--top`` (``--heads-choice top``: ``rating_heads.top_then_heads``) keep, paired by
story (with ``--against``: also other heads' choice among the same top, and these heads' top and
added choices minus it; and their added choice, the commands' default, and these heads' added choice
minus it), and the within-story agreement of each head and of the score with the readers
(``rerank_agreement.py``'s). Files that record ``score_penalties`` (``realign --keep-candidates`` since
2026-12-06) have them added back on reading (``candidate_choice.rated_stories``), so the default
``--penalties`` rebuild the default's score; ``--penalties 0 0`` for older files ``realign`` decoded
with its default penalties, whose scores hold them unrecorded. ``ship``: the heads into the package
with their LoRA as float16, the commands' ``--heads shipped``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import candidate_choice as cc
import numpy as np
import rerank_agreement as ra
import torch
import torch.nn.functional as F
from transformers import AutoConfig

from secondthoughts.decoding import HEADS_ADD, HEADS_TOP, LENGTH_PENALTY, SOURCE_PENALTY
from secondthoughts.models import default_device, embedded_dir
from secondthoughts.rating_heads import (
    SCALES,
    SHIPPED,
    RatingHeads,
    heads_added,
    is_heads_folder,
    standardised,
    top_then_heads,
)


def pair_loss(scores: torch.Tensor, cands: list[cc.Candidate]) -> tuple[torch.Tensor, int]:
    """Sum of -log sigmoid(better - worse) over a story's pairs rated >= 1 apart, per scale; and their count."""
    total, n = scores.new_zeros(()), 0
    for k, scale in enumerate(SCALES):
        y = torch.tensor([c[scale] for c in cands], device=scores.device)
        better = (y[:, None] - y[None, :]) >= 1.0
        if better.any():
            total = total + F.softplus(-(scores[:, k][:, None] - scores[:, k][None, :])[better]).sum()
            n += int(better.sum())
    return total, n


def train(
    stories: list[list[cc.Candidate]], layers: int, epochs: int, lr: float, seed: int = 0, per_step: int = 8, init: Path | None = None
) -> RatingHeads:  # fmt: skip
    """New heads over ``layers`` decoder layers, or ``init``'s heads (their own layers) continued."""
    torch.manual_seed(seed)
    model = RatingHeads.load(init, default_device(), trainable=True) if init else RatingHeads.new(layers).to(default_device())
    model.train()
    groups = [{"params": [p for p in model.body.parameters() if p.requires_grad], "lr": lr}, {"params": model.head.parameters(), "lr": 1e-3}]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = epochs * -(-len(stories) // per_step)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, t / max(1, steps // 20)) * max(0.0, 1 - t / steps))
    order, rng = list(range(len(stories))), random.Random(seed)
    for epoch in range(epochs):
        rng.shuffle(order)
        losses = []
        for b in range(0, len(order), per_step):
            batch = [stories[i] for i in order[b : b + per_step]]
            scores = model([c for s in batch for c in s])
            parts, at = [], 0
            for s in batch:
                parts.append(pair_loss(scores[at : at + len(s)], s))
                at += len(s)
            n = sum(k for _, k in parts)
            if n:  # a batch whose stories have no pair rated apart teaches nothing
                loss = sum(v for v, _ in parts) / n
                opt.zero_grad(), loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step(), sched.step(), losses.append(loss.item())
        print(f"epoch {epoch + 1}: mean pair loss {np.mean(losses) if losses else float('nan'):.4f}", flush=True)
    return model.eval()


@torch.inference_mode()
def head_scores(model: RatingHeads, stories: list[list[cc.Candidate]]) -> list[np.ndarray]:
    """Each story's candidates' two head scores, standardised within the story."""
    return [standardised(model.score(s[0]["context"], s[0]["source"], [c["text"] for c in s])) for s in stories]


def agreement(stories: list[list[cc.Candidate]], scores: list[np.ndarray], k: int, scale: str) -> tuple[float, float, float, int]:
    """Score column ``k``'s within-story agreement with the readers on ``scale`` (rerank_agreement.py's: pairs
    rated >= 1 apart): the share, its 95% interval over resampled stories, and the pairs."""
    items = [{"story": c["id"], "text": c["text"], "s": float(x[i, k]), "y": c[scale]} for s, x in zip(stories, scores) for i, c in enumerate(s)]
    return ra.agreement(items, lambda i: i["s"], lambda i: i["y"])


def read(args: argparse.Namespace) -> list[list[cc.Candidate]]:
    """Each file's stories rated in its own split; one line and exit on bad input, before any model loads."""
    return [s for _, _, stories in cc.load_files(args.candidates, args.split, cc.read_jsonl(args.labels), args.skip_unrated) for s in stories]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sh = sub.add_parser("ship", help="copy heads into the package as the commands' default (--heads shipped), LoRA stored as float16")
    sh.add_argument("--heads", required=True, type=Path, help="a folder written by train")
    sh.add_argument("--card", required=True, type=Path, help="the heads' card (README.md there): data, recipe, figures")
    sh.add_argument("--out", type=Path, default=SHIPPED, help="where (default: the package's own folder, in a source checkout)")
    for name in ("train", "choose"):
        p = sub.add_parser(name)
        p.add_argument("--candidates", required=True, nargs="+", help="realign --keep-candidates output JSONL, one file per round")
        p.add_argument("--split", required=True, nargs="+", help="the labels' split of each candidates file, in the same order")
        p.add_argument("--labels", required=True)
        p.add_argument("--skip-unrated", action="store_true", help="as candidate_choice.py's: drop texts decoded again that are not the rated ones")
    t, c = sub.choices["train"], sub.choices["choose"]
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--layers", type=int, default=24, help="decoder layers of the embedded SmolLM2 kept (of 30)")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--lr", type=float, default=5e-4, help="LoRA's learning rate (the head's: 1e-3)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--per-step", type=int, default=8, help="stories a step (each brings all its rated candidates)")
    t.add_argument("--init", type=Path, help="heads to continue (a folder written by train or ship; their --layers), not new ones")
    c.add_argument("--heads", required=True, type=Path, help="a folder written by train")
    c.add_argument("--weights", nargs=2, type=float, default=HEADS_ADD, metavar=("WA", "WC"), help="the score + WA x align + WC x coherence (realign --heads-add)")
    c.add_argument("--top", type=int, default=HEADS_TOP, help="the heads choose among the score's top K (realign --heads-choice top --heads-top)")
    c.add_argument("--penalties", nargs=2, type=float, default=[SOURCE_PENALTY, LENGTH_PENALTY], metavar=("SOURCE", "LENGTH"),
                   help="the best-of score's penalties on the files' likelihoods; 0 0 for files realign decoded with its own before it recorded them (score_penalties)")
    c.add_argument("--against", type=Path, help="other heads (e.g. earlier ones): their pick among the top K, and this one's top-K and added picks minus it")
    args = ap.parse_args()
    if args.cmd == "ship":
        for ok, path, want in ((is_heads_folder(args.heads), args.heads, "a folder written by `train`"), (args.card.is_file(), args.card, "a model card")):
            if not ok:
                sys.exit(f"error: {path}: missing ({want})")
        heads = RatingHeads.load(args.heads, "cpu")
        meta = {k: v for k, v in json.loads((args.heads / "heads.json").read_text()).items() if k not in ("layers", "base")}
        heads.save(args.out, meta, dtype=torch.float16, card=args.card.read_text(encoding="utf-8"))
        print(f"wrote {args.out}")
        return
    if args.cmd == "train" and args.init and not is_heads_folder(args.init):
        sys.exit(f"error: --init {args.init}: no heads.json (a folder written by `train` or `ship`)")
    for flag in ("heads", "against"):
        if args.cmd == "choose" and getattr(args, flag) and not is_heads_folder(getattr(args, flag)):
            sys.exit(f"error: --{flag} {getattr(args, flag)}: no heads.json (a folder written by `train`)")
    if args.cmd == "choose" and args.top < 1:
        sys.exit("error: --top must be at least 1")
    if args.cmd == "train":
        n = AutoConfig.from_pretrained(str(embedded_dir())).num_hidden_layers
        checks = [("--epochs", args.epochs >= 1, "at least 1"), ("--per-step", args.per_step >= 1, "at least 1"), ("--lr", args.lr > 0, "above 0"),
                  ("--layers", 1 <= args.layers <= n, f"1 to {n}, the embedded model's layers"), ("--out", not args.out.is_file(), "a folder, not a file")]  # fmt: skip
        for flag, ok, want in checks:
            if not ok:
                sys.exit(f"error: {flag} must be {want}")
    stories = read(args)
    print(f"{len(stories)} stories, {sum(map(len, stories))} rated candidates")
    if args.cmd == "train":
        model = train(stories, args.layers, args.epochs, args.lr, args.seed, args.per_step, args.init)
        meta = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed, "trained_on": dict(zip(args.candidates, args.split))}
        model.save(args.out, meta | ({"continued_from": str(args.init)} if args.init else {}))
        print(f"wrote {args.out}")
        return
    heads = head_scores(RatingHeads.load(args.heads, default_device()), stories)
    scores = [np.column_stack([x, cc.best_of_scores(s, *args.penalties)]) for s, x in zip(stories, heads)]
    wa, wc = args.weights
    base = cc.pick(stories, *args.penalties)
    alone = [s[int(np.argmax(x[:, 0] + x[:, 1]))] for s, x in zip(stories, scores)]
    kept = [s[heads_added(x[:, 2], x[:, :2], (wa, wc))] for s, x in zip(stories, scores)]  # --heads-add WA WC's choice
    top = [s[top_then_heads(x[:, 2], x[:, :2], args.top)] for s, x in zip(stories, scores)]  # --heads-choice top's
    if any(args.penalties):  # else the files' scores are the best-of score's: the next row
        lik = [max(s, key=lambda c: c["score"]) for s in stories]  # max keeps the first: choose_best's tie rule
        print(f"{'the rewrite likelihood alone':36s} {cc.summary(lik)}")
    print(f"{'the best-of score':36s} {cc.summary(base)}")
    print(f"{'the heads alone (align + coherence)':36s} {cc.summary(alone)}\n{'':36s} minus the score's: {cc.paired(alone, base)}")
    print(f"{f'score + {wa:g} x align + {wc:g} x coherence':36s} {cc.summary(kept)}\n{'':36s} minus the score's: {cc.paired(kept, base)}")
    print(f"{'':36s} another pick than the score's in {sum(a is not b for a, b in zip(kept, base))} of {len(stories)} stories")
    print(f"{f'the heads among the score top {args.top}':36s} {cc.summary(top)}\n{'':36s} minus the score's: {cc.paired(top, base)}")
    print(f"{'':36s} another pick than the score's in {sum(a is not b for a, b in zip(top, base))} of {len(stories)} stories")
    other = head_scores(RatingHeads.load(args.against, default_device()), stories) if args.against else None
    if other is not None:
        theirs = [s[top_then_heads(x[:, 2], y, args.top)] for s, x, y in zip(stories, scores, other)]
        print(f"{f'--against among the top {args.top}':36s} {cc.summary(theirs)}\n{'':36s} these heads' minus theirs: {cc.paired(top, theirs)}")
        print(f"{'':36s} another pick than theirs in {sum(a is not b for a, b in zip(top, theirs))} of {len(stories)} stories")
        print(f"{'':36s} these heads added ({wa:g}, {wc:g}) minus theirs among the top {args.top}: {cc.paired(kept, theirs)}")
        theirs_added = [s[heads_added(x[:, 2], y, (wa, wc))] for s, x, y in zip(stories, scores, other)]  # the commands' default choice, theirs
        print(f"{f'--against added ({wa:g}, {wc:g})':36s} {cc.summary(theirs_added)}\n{'':36s} these heads added minus theirs added: {cc.paired(kept, theirs_added)}")
        print(f"{'':36s} another pick than theirs added in {sum(a is not b for a, b in zip(kept, theirs_added))} of {len(stories)} stories")
    for scale, name in (("align", "Align"), ("coh", "Coherence")):
        k = SCALES.index(scale)
        (h, hl, hh, n), (d, dl, dh, _) = agreement(stories, scores, k, scale), agreement(stories, scores, 2, scale)
        theirs_agree = "" if other is None else ", --against's head {:.3f} [{:.3f}, {:.3f}]".format(*agreement(stories, other, k, scale)[:3])
        print(f"agreement with the readers on {name} ({n} pairs rated >= 1 apart): its head {h:.3f} [{hl:.3f}, {hh:.3f}]{theirs_agree}, the best-of score {d:.3f} [{dl:.3f}, {dh:.3f}]")


if __name__ == "__main__":
    main()
