"""The loss pieces of refinement, each against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from secondthoughts.rl_loss import (
    ail_hinge,
    clipped_policy_loss,
    greedy_advantages,
    mean_token_logp,
    rloo_advantages,
    sequence_kl,
    total_rewards,
)


def test_total_rewards_penalize_invalid_chains():
    got = total_rewards(torch.tensor([0.8, 0.3, 0.9]), torch.tensor([True, False, True]), 1.5)
    assert got.tolist() == pytest.approx([0.8, -1.5, 0.9])


def test_sequence_kl_sums_log_ratios_over_the_chain():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: 0.5 - 1.0 (third token is padding); row 1: 3 * 0.5
    assert sequence_kl(logps, ref, mask).tolist() == pytest.approx([-0.5, 1.5])


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    got = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0]), k=3)
    # 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2 | 0 - 3, 0 - 3, 6 - 0
    assert got.tolist() == pytest.approx([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(5), k=2)


def test_greedy_baseline_subtracts_the_prompts_greedy_reward():
    got = greedy_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.5, 5.0]), k=2)
    assert got.tolist() == pytest.approx([-0.5, 0.5, -2.0, -1.0])


def test_clipped_policy_loss_by_hand():
    ratio = torch.tensor([[1.5, 0.5], [1.1, 0.7]])
    old = torch.tensor([[-1.0, -2.0], [-0.3, -4.0]])
    logps = old + ratio.log()
    adv = torch.tensor([1.0, -2.0])
    mask = torch.ones(2, 2)
    loss, clip = clipped_policy_loss(logps, old, adv, mask, clip_eps=0.2)
    # seq 0 (A=1):  -min(1.5, 1.2) - min(0.5, 0.8) = -1.7
    # seq 1 (A=-2): -min(-2.2, -2.2) - min(-1.4, -1.6) = 3.8   -> mean 1.05
    assert float(loss) == pytest.approx(1.05, abs=1e-6)
    assert float(clip) == pytest.approx(0.75)  # 1.5, 0.5 and 0.7 fall outside [0.8, 1.2]
    # a padded token changes nothing, whatever its ratio
    logps2 = torch.cat([logps, torch.tensor([[5.0], [5.0]])], 1)
    old2 = torch.cat([old, torch.zeros(2, 1)], 1)
    loss2, clip2 = clipped_policy_loss(logps2, old2, adv, torch.cat([mask, torch.zeros(2, 1)], 1), 0.2)
    assert float(loss2) == pytest.approx(1.05, abs=1e-6) and float(clip2) == pytest.approx(0.75)


def test_clipped_loss_at_ratio_one_has_the_reinforce_gradient():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -0.3]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([0.5, -2.0])
    loss, _ = clipped_policy_loss(logps, logps.detach(), adv, mask, 0.2)
    loss.backward()
    # d/d logp of -(1/N) sum_i A_i sum_t logp_it = -A_i / N on real tokens
    assert logps.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.0, 1.0, 1.0, 1.0])
    assert loss.item() == pytest.approx(-(0.5 * 2 + -2.0 * 3) / 2)  # the surrogate at ratio 1: -mean(A * tokens)


def test_mean_token_logp_and_ail_hinge():
    assert mean_token_logp(torch.tensor([[-1.0, -3.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]])).tolist() == [-2.0]
    # gaps 0.2 and 1.8 against margin 0.5: (0.3 + 0) / 2
    got = ail_hinge(torch.tensor([-1.0, -0.2]), torch.tensor([-1.2, -2.0]), margin=0.5)
    assert float(got) == pytest.approx(0.15)
    assert float(ail_hinge(torch.tensor([0.0]), torch.tensor([-1.0]), 0.5)) == 0.0
