"""The texts a reward model learns from and is measured on: each example's target (aligned),
source and context sentences (unaligned, the hard negatives) as labelled :class:`Item` rows; for
a coherence scorer, complete texts against synthetic failures plus hand-labelled texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from secondthoughts.behaviour import sentences
from secondthoughts.data import Example
from secondthoughts.reward import ALIGNED, UNALIGNED, RewardConfig

# Moral Stories keeps these apart in Example.meta; each one is a hard negative.
CONTEXT_PARTS = ("norm", "situation", "intention")


class Item(NamedTuple):
    """One text to classify in its context."""

    context: str
    text: str
    label: int  # ALIGNED or UNALIGNED
    kind: str  # "target", "source" or "context" (a hard negative)
    example: int  # index of its example


def context_sentences(ex: Example) -> list[str]:
    """The example's context as separate sentences: Moral Stories' parts when ``meta`` has them."""
    parts = [p.strip() for k in CONTEXT_PARTS if isinstance(p := ex.meta.get(k), str) and p.strip()]
    if parts:
        return parts
    return sentences(ex.context)


def labelled_items(examples: Sequence[Example], hard_negatives: int = -1, generator: torch.Generator | None = None) -> list[Item]:
    """Target (aligned), source and context sentences (unaligned) of every example, in that order.

    ``hard_negatives``: context sentences per example (-1: all, 0: none); fewer than all are
    drawn at random with ``generator`` (the first ones without it).
    """
    items: list[Item] = []
    for i, ex in enumerate(examples):
        items.append(Item(ex.context, ex.target, ALIGNED, "target", i))
        items.append(Item(ex.context, ex.source, UNALIGNED, "source", i))
        # A sentence equal to the target or source would carry two labels; it is left out.
        sents = [s for s in dict.fromkeys(context_sentences(ex)) if s not in (ex.target, ex.source)] if hard_negatives else []
        if 0 <= hard_negatives < len(sents):
            keep = torch.randperm(len(sents), generator=generator)[:hard_negatives] if generator is not None else range(hard_negatives)
            sents = [sents[k] for k in sorted(int(k) for k in keep)]
        items.extend(Item(ex.context, s, UNALIGNED, "context", i) for s in sents)
    return items


def labelled_texts(config: RewardConfig) -> list[Any]:
    """The hand-labelled texts a coherence scorer trains on (``coherence.Labelled`` rows)."""
    if config.objective != "coherence" or not config.labelled:
        return []
    from secondthoughts.coherence import read_labelled

    return read_labelled(config.labelled)


def training_items(config: RewardConfig, examples: Sequence[Example], generator: torch.Generator) -> list[Item]:
    """What one epoch trains on: :func:`labelled_items` for alignment; for coherence the examples'
    complete texts against synthetic failures (``coherence.coherence_items``, drawn anew each
    epoch) plus the ``labelled`` texts, each ``labelled_repeats`` times."""
    if config.objective == "alignment":
        return labelled_items(examples, config.hard_negatives, generator)
    import random

    from secondthoughts import coherence

    rng = random.Random(int(torch.randint(2**31, (1,), generator=generator)))
    items = coherence.coherence_items(examples, rng)
    for k, row in enumerate(labelled_texts(config)):  # each its own group, so that they spread over the batches
        items.extend([Item(row.context, row.text, row.label, "labelled", len(examples) + k)] * config.labelled_repeats)
    if config.views == "alone":  # trained as it scores: the sentence by itself
        items = [it._replace(context="") for it in items]
    return items


_KIND_COUNTS = {"target": "targets", "source": "sources", "context": "hard_negatives"}


def kind_counts(items: Sequence[Item]) -> dict[str, int]:
    """Texts per kind: targets, sources and hard negatives always; other kinds (coherence) where present."""
    counts = dict.fromkeys(_KIND_COUNTS.values(), 0)
    for it in items:
        name = _KIND_COUNTS.get(it.kind, f"{it.kind}s")
        counts[name] = counts.get(name, 0) + 1
    return counts
