"""The AIL term of refinement (Second Thoughts' adversarial imitation learning): per prompt, the
gold chain as the expert and, as negatives, the lowest-reward sample and / or the chain built the
same way toward the unaligned text; the loss is a hinge on their mean per-token log-likelihoods."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from secondthoughts.data import Example
from secondthoughts.edits import Edit, infer_edits, merge_close_edits, tokenize
from secondthoughts.rl_loss import ail_hinge, mean_token_logp

NEGATIVES: tuple[str, ...] = ("sample", "reverse", "both")

# (prompts, completions, sources): token ids of the AIL rows and the text each chain edits.
AilRows = tuple[list[list[int]], list[list[int]], list[str]]


def expert_chain(source: str, target: str, costs: tuple[float, float, float], merge_gap: int | None) -> list[Edit]:
    """The chain ``source -> target`` as the policy learned chains (its costs and merge gap)."""
    tokens = tokenize(source)
    chain = infer_edits(tokens, tokenize(target), *costs)
    return chain if merge_gap is None else merge_close_edits(tokens, chain, merge_gap)


def ail_rows(
    examples: Sequence[Example], prompt_ids: Sequence[list[int]], prompt_of: Callable[[Example], list[int]],
    chain_ids: Callable[[list[Edit], str], list[int]], costs: tuple[float, float, float], merge_gap: int | None, negative: str,
) -> AilRows:  # fmt: skip
    """Expert chains (gold, source -> target) after each prompt and, for ``reverse`` negatives, the
    chain built the same way toward the unaligned text (target -> source) after a prompt holding
    the target (``prompt_of``). ``chain_ids`` tokenizes a chain as training tokenized chains."""
    prompts: list[list[int]] = []
    comps: list[list[int]] = []
    sources: list[str] = []
    for ex, p in zip(examples, prompt_ids):
        prompts.append(p)
        comps.append(chain_ids(expert_chain(ex.source, ex.target, costs, merge_gap), ex.source))
        sources.append(ex.source)
    if negative in ("reverse", "both"):
        for ex in examples:
            prompts.append(prompt_of(Example(ex.context, ex.target, ex.source, ex.id)))
            comps.append(chain_ids(expert_chain(ex.target, ex.source, costs, merge_gap), ex.target))
            sources.append(ex.target)
    return prompts, comps, sources


def prompt_ail_rows(ail: AilRows, g: int, prompts: int) -> list[int]:
    """Indices into ``ail`` of prompt ``g``'s rows: its expert chain, then its reverse chain when used."""
    return [g, prompts + g][: len(ail[0]) // prompts] if ail[0] else []


def ail_terms(
    logps: torch.Tensor, mask: torch.Tensor, k: int, lowest: int, negative: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt's AIL hinge (rows: its ``k`` samples, the expert chain, the reversed one), the
    expert's mean log-prob minus the negatives' (mean), and the expert's: the negatives are the
    lowest-reward sample (row ``lowest``) and / or the reversed chain (``negative``)."""
    expert_ll = mean_token_logp(logps[k : k + 1], mask[k : k + 1])
    negatives = []
    if negative in ("sample", "both"):
        negatives.append(mean_token_logp(logps[lowest : lowest + 1], mask[lowest : lowest + 1]))
    if negative in ("reverse", "both"):
        negatives.append(mean_token_logp(logps[k + 1 : k + 2], mask[k + 1 : k + 2]))
    loss = torch.stack([ail_hinge(expert_ll, neg, margin) for neg in negatives]).mean()
    return loss, torch.stack([expert_ll - neg for neg in negatives]).mean(), expert_ll
