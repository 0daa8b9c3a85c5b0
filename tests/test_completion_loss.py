"""secondthoughts.completion_loss: chunked, checkpointed log-probs give the whole projection's
numbers and gradients; the training loss is the summed cross-entropy of the full logits."""

from __future__ import annotations

import contextlib

import torch


def test_chunked_token_logprobs_match_the_whole_projection():
    """Chunked, checkpointed log-probs give the values and gradients of the whole (positions,
    vocab) log-softmax, with and without a mask of allowed tokens and a temperature."""
    import torch.nn.functional as F

    from secondthoughts.completion_loss import token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    allow = torch.rand(23, 50) > 0.6
    allow[torch.arange(23), targets] = True
    weights = torch.randn(23)  # a loss that weighs positions differently, as the RL loss does
    for temperature, mask in ((1.0, None), (0.7, allow)):
        logits = head(hidden) / temperature
        if mask is not None:
            logits = logits.masked_fill(~mask, -float("inf"))
        want = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        want_grads = torch.autograd.grad((want * weights).sum(), (hidden, head.weight))
        allowed = None if mask is None else lambda a, b, m=mask: m[a:b]
        got = token_logprobs(head, hidden, targets, temperature=temperature, allowed=allowed, chunk=5)
        got_grads = torch.autograd.grad((got * weights).sum(), (hidden, head.weight))
        assert torch.allclose(got, want, atol=1e-6)
        for g, w in zip(got_grads, want_grads):
            assert torch.allclose(g, w, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(token_logprobs(head, hidden, targets, temperature=temperature, allowed=allowed, chunk=7), want, atol=1e-6)
    # the training loss is the summed cross-entropy
    want = F.cross_entropy(head(hidden), targets, reduction="sum")
    assert torch.allclose(-token_logprobs(head, hidden, targets, chunk=4).sum(), want, atol=1e-5)


def test_token_logprobs_through_trainable_token_rows_are_pefts(lora_rows):
    """A tied head with PEFT's trainable token rows (frozen base, so the derivatives are formed
    in the forward): PEFT's own log-probs and row gradient, adapters on and off (refinement's
    reference pass turns them off)."""
    from secondthoughts.completion_loss import token_logprobs

    model, ids = lora_rows
    head = model.get_base_model().get_output_embeddings()
    layer = head.token_adapter
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    hidden = torch.randn(9, layer.base_layer.weight.shape[1], requires_grad=True)
    targets = torch.tensor(ids[:3] * 3)
    for disabled in (False, True):
        with model.disable_adapter() if disabled else contextlib.nullcontext():
            want = type(layer).forward(layer, hidden).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)  # PEFT's
            got = token_logprobs(head, hidden, targets, chunk=2)
            assert torch.allclose(got, want, atol=1e-5)
            wanted = [hidden] if disabled else [hidden, delta]
            for g, w in zip(torch.autograd.grad(got.sum(), wanted), torch.autograd.grad(want.sum(), wanted)):
                assert w.abs().sum() > 0 and torch.allclose(g, w, atol=1e-5)


def test_a_head_known_only_by_calling_it_is_called():
    from secondthoughts.completion_loss import token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 30), torch.nn.Tanh())  # not a plain projection
    hidden, targets = torch.randn(7, 8), torch.randint(0, 30, (7,))
    want = head(hidden).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(token_logprobs(head, hidden, targets, chunk=3), want, atol=1e-6)


def test_completion_loss_matches_the_full_logits(tiny_tok, tiny_lm):
    import torch.nn.functional as F

    from secondthoughts.completion_loss import CompletionLoss
    from secondthoughts.sequences import IGNORE_INDEX

    torch.manual_seed(1)
    ids = torch.randint(3, len(tiny_tok), (2, 12))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[1, 9:] = IGNORE_INDEX
    position_ids = torch.arange(12).repeat(2, 1)
    module = CompletionLoss(tiny_lm)
    got = module(ids, position_ids, labels)
    (got_grad,) = torch.autograd.grad(got, [tiny_lm.model.embed_tokens.weight])
    logits = tiny_lm(input_ids=ids, position_ids=position_ids).logits[:, :-1]
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    (want_grad,) = torch.autograd.grad(want, [tiny_lm.model.embed_tokens.weight])
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(got_grad, want_grad, atol=1e-5)


def test_completion_loss_with_trainable_rows_matches_peft_forward(lora_rows):
    """The training loss of a LoRA model with trainable token rows (lean rows, the frozen head's
    derivatives formed in the forward): the loss and every trainable gradient of PEFT's own
    forward, which the model computes with its rows restored to PEFT's."""
    import torch.nn.functional as F
    from tiny import peft_forwards

    from secondthoughts.completion_loss import CompletionLoss
    from secondthoughts.sequences import IGNORE_INDEX

    model, ids = lora_rows
    torch.manual_seed(2)
    x = torch.randint(3, min(ids), (2, 10))
    x[0, 6], x[1, 3], x[1, 7] = ids[0], ids[1], ids[2]
    labels = x.clone()
    labels[:, :3] = IGNORE_INDEX
    position_ids = torch.arange(10).repeat(2, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    got = CompletionLoss(model)(x, position_ids, labels)
    got_grads = torch.autograd.grad(got, params)
    with peft_forwards(model):
        logits = model(input_ids=x, position_ids=position_ids).logits[:, :-1]
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    want_grads = torch.autograd.grad(want, params)
    assert torch.allclose(got, want, atol=1e-4)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5)
    assert any(g.abs().sum() > 0 for g, p in zip(got_grads, params) if p.shape[0] == len(ids))


def test_a_frozen_head_gives_the_whole_projections_numbers_and_gradients():
    """With the head's matrix frozen (LoRA training), the derivatives formed in the forward give
    the hidden gradient of the whole log-softmax, under per-position weights, a temperature and
    a mask of allowed tokens; without a gradient the values are the same."""
    from secondthoughts.completion_loss import token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True).requires_grad_(False)
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    allow = torch.rand(23, 50) > 0.6
    allow[torch.arange(23), targets] = True
    weights = torch.randn(23)
    for temperature, mask in ((1.0, None), (0.7, allow)):
        logits = head(hidden) / temperature
        if mask is not None:
            logits = logits.masked_fill(~mask, -float("inf"))
        want = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        (want_grad,) = torch.autograd.grad((want * weights).sum(), [hidden])
        allowed = None if mask is None else lambda a, b, m=mask: m[a:b]
        got = token_logprobs(head, hidden, targets, temperature=temperature, allowed=allowed, chunk=5)
        assert got.grad_fn is not None and "FrozenHead" in type(got.grad_fn).__name__
        (got_grad,) = torch.autograd.grad((got * weights).sum(), [hidden])
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(got_grad, want_grad, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(token_logprobs(head, hidden, targets, temperature=temperature, allowed=allowed, chunk=4), want, atol=1e-6)
