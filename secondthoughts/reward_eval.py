"""Held-out metrics of a reward model or any reward function (``secondthoughts reward evaluate``):
accuracy per text and per kind, the target above its source (pairwise), the target above its own
context's sentences (echo); coherence scorers are measured against synthetic failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from secondthoughts.data import Example
from secondthoughts.reward import ALIGNED, RewardEnsemble, RewardFn, RewardModel, objective_of
from secondthoughts.reward_data import kind_counts, labelled_items


def evaluate_model(model: RewardModel | RewardEnsemble, examples: Sequence[Example], *, hard_negatives: bool = True,
                   progress: bool = False) -> dict[str, Any]:
    """Held-out metrics for what ``model`` measures: :func:`evaluate` for alignment,
    ``coherence.evaluate_scorer`` (complete texts against synthetic failures) for coherence."""
    def score(contexts: list[str], texts: list[str]) -> list[float]:
        return model.score(contexts, texts, progress=progress)

    if objective_of(model) == "coherence":
        from secondthoughts.coherence import evaluate_scorer

        return evaluate_scorer(score, examples)
    return evaluate(score, examples, hard_negatives=hard_negatives)


def evaluate(reward: RewardFn, examples: Sequence[Example], *, hard_negatives: bool = True,
             threshold: float = 0.5) -> dict[str, Any]:
    """Held-out metrics of any reward function returning probabilities.

    ``accuracy``: per text, ``reward >= threshold`` iff aligned, over targets, sources and
    (with ``hard_negatives``) context sentences; also per kind. ``pairwise_accuracy``: the
    target scores strictly above its source. ``echo_accuracy``: the target scores strictly
    above every sentence of its own context.
    """
    items = labelled_items(examples, -1 if hard_negatives else 0)
    if not items:
        return {"examples": 0}
    scores = reward([it.context for it in items], [it.text for it in items])
    correct = [(s >= threshold) == (it.label == ALIGNED) for s, it in zip(scores, items)]
    by_kind: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_kind.setdefault(it.kind, []).append(i)
    per_example: dict[int, dict[str, list[float]]] = {}
    for s, it in zip(scores, items):
        per_example.setdefault(it.example, {}).setdefault(it.kind, []).append(s)
    pairs = [d["target"][0] > d["source"][0] for d in per_example.values()]
    echoes = [d["target"][0] > max(d["context"]) for d in per_example.values() if d.get("context")]
    out: dict[str, Any] = {
        "examples": len(examples),
        **kind_counts(items),
        "accuracy": sum(correct) / len(correct),
        "pairwise_accuracy": sum(pairs) / len(pairs),
    }
    if echoes:
        out["echo_accuracy"] = sum(echoes) / len(echoes)
    for kind, idx in by_kind.items():
        out[f"accuracy_{kind}"] = sum(correct[i] for i in idx) / len(idx)
        out[f"mean_reward_{kind}"] = sum(scores[i] for i in idx) / len(idx)
    return out
