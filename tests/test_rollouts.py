"""Rollout rows: prompt + completion layout, and completion log-probabilities against plain forwards."""

from __future__ import annotations

import pytest
import torch

from secondthoughts.rollouts import CompletionLogProbs, batch_rows


def test_batch_rows_layout():
    rows = batch_rows([[1, 2], [3]], [[4], [5, 6]], pad_id=0)
    assert rows["input_ids"].tolist() == [[1, 2, 4, 0], [0, 3, 5, 6]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert rows["completion_ids"].tolist() == [[4, 0], [5, 6]]
    assert rows["completion_mask"].tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_completion_logprobs_match_unpadded_forwards(tiny_tok, tiny_lm):
    prompts, comps = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]
    with torch.no_grad():
        got = CompletionLogProbs(tiny_lm)(**batch_rows(prompts, comps, tiny_tok.pad_token_id))
    for i, (p, c) in enumerate(zip(prompts, comps)):
        with torch.no_grad():
            logits = tiny_lm(torch.tensor([p + c])).logits[0].log_softmax(-1)
        want = [float(logits[len(p) - 1 + j, t]) for j, t in enumerate(c)]
        assert got[i, : len(c)].tolist() == pytest.approx(want, abs=1e-5)
        assert got[i, len(c) :].abs().sum() == 0
