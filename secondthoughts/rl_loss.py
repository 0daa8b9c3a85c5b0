"""The loss pieces of refinement (``refine``), as plain functions on tensors: the validity term,
the sampled-token KL, the RLOO and greedy baselines, PPO's clipped surrogate and the AIL hinge."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def total_rewards(scores: torch.Tensor, valid: torch.Tensor, invalid_penalty: float) -> torch.Tensor:
    """Alignment score for a valid chain, ``-invalid_penalty`` for one that did not parse, apply or
    finish (its score, if any, is ignored: the text it would give does not exist)."""
    return torch.where(valid, scores, torch.full_like(scores, -invalid_penalty))


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence: the sum over its tokens of ``log pi - log pi_ref`` (the sampled-token estimate
    of KL(pi || pi_ref)). Shapes (N, T) -> (N,)."""
    return ((logps - ref_logps) * mask).sum(-1)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Reward minus the mean reward of the other ``k - 1`` samples of the same prompt; rewards are
    grouped as [prompt 0: k samples, prompt 1: k samples, ...]."""
    if k < 2 or rewards.numel() % k:
        raise ValueError(f"RLOO needs k >= 2 and whole groups: {rewards.numel()} rewards, k={k}")
    g = rewards.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).view(-1)


def greedy_advantages(rewards: torch.Tensor, baseline: torch.Tensor, k: int) -> torch.Tensor:
    """Reward minus the reward of the prompt's greedy decode (``baseline``: one per prompt)."""
    if rewards.numel() != baseline.numel() * k:
        raise ValueError(f"{rewards.numel()} rewards for {baseline.numel()} baselines and k={k}")
    return (rewards.view(-1, k) - baseline.view(-1, 1)).view(-1)


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with
    ``r = exp(logp - old_logp)`` and the sequence's advantage ``A``, summed over each sequence's
    tokens and averaged over sequences. At ``r == 1`` its gradient is REINFORCE's,
    ``-A * grad log pi(chain)``. Returns (loss, share of tokens whose ratio was clipped)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(-1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    loss = (per_token * mask).sum(-1).mean()
    clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0) & mask.bool()
    return loss, clipped.sum() / mask.sum().clamp(min=1)


def mean_token_logp(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalized log-likelihood per sequence, so chains of different lengths compare."""
    return (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def ail_hinge(expert_ll: torch.Tensor, negative_ll: torch.Tensor, margin: float) -> torch.Tensor:
    """The imitation contrast: mean of ``max(0, margin - (expert_ll - negative_ll))``."""
    return F.relu(margin - (expert_ll - negative_ll)).mean()
