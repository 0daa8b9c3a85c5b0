"""Log-probabilities of completion tokens and the fine-tuning loss over them, projecting the
vocabulary only where a token is scored: ``token_logprobs`` (chunked, checkpointed under
autograd; with a frozen head each chunk's derivatives are formed in its forward) and
``CompletionLoss`` (what ``sft.train`` runs). Below training: the RL rollouts and the rewrite
likelihood score completions with the same function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from secondthoughts.sequences import IGNORE_INDEX
from secondthoughts.token_rows import HeadWeights, head_parameters, lean_token_rows

LOGITS_PER_CHUNK = 2**23  # vocabulary logits projected at once (32 MB in fp32: ~170 positions on SmolLM2)


def _masked_logits(logits: torch.Tensor, temperature: float, allowed: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits if allowed is None else logits.masked_fill(~allowed.to(logits.device), -float("inf"))


class _FrozenHeadLogProbs(torch.autograd.Function):
    """Log-probabilities through a head whose base matrix is frozen, each chunk's derivatives
    formed in the forward: ``d lp_i / d h_i`` and ``d lp_i / d logits_i`` on the replaced rows,
    which the backward only scales by each position's incoming gradient (``lp_i`` depends on
    ``h_i`` alone). The logits are thus computed once, where a checkpointed chunk computes them
    again in its backward, and never more than one chunk's are alive."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, row_weight: torch.Tensor | None, head: HeadWeights, targets: torch.Tensor,
                temperature: float, allowed: Callable[[int, int], torch.Tensor] | None, size: int) -> torch.Tensor:  # fmt: skip
        n = hidden.shape[0]
        want_h = hidden.requires_grad
        want_rows = row_weight is not None and row_weight.requires_grad
        out = hidden.new_empty(n, dtype=torch.float32)
        d_hidden = torch.empty_like(hidden) if want_h else hidden.new_empty(0)
        d_rows = hidden.new_empty((n, len(head.rows) if head.rows is not None else 0), dtype=torch.float32)
        for start in range(0, n, size):
            stop = min(start + size, n)
            h, t = hidden[start:stop], targets[start:stop]
            mask = None if allowed is None else allowed(start, stop).to(h.device)
            logp = _masked_logits(head.logits(h), temperature, mask).log_softmax(-1)
            out[start:stop] = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            # d lp / d logits = (onehot(target) - softmax) / temperature, zero where the mask rules a token out
            g = logp.exp_().neg_()
            g[torch.arange(stop - start, device=g.device), t] += 1
            if mask is not None:
                g.masked_fill_(~mask, 0)
            if temperature != 1.0:
                g /= temperature
            if head.rows is not None:
                d_rows[start:stop] = g[:, head.rows]
                g[:, head.rows] = 0
            if want_h:
                d_h = g.to(head.weight.dtype) @ head.weight
                if head.rows is not None:
                    d_h = d_h + d_rows[start:stop].to(row_weight.dtype) @ row_weight
                d_hidden[start:stop] = d_h
        ctx.save_for_backward(hidden if want_rows else hidden.new_empty(0), d_hidden, d_rows)
        ctx.row_dtype = row_weight.dtype if want_rows else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, d_hidden, d_rows = ctx.saved_tensors
        grad_hidden = (grad.unsqueeze(-1) * d_hidden).to(d_hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_rows = None
        if ctx.row_dtype is not None and ctx.needs_input_grad[1]:
            grad_rows = ((grad.unsqueeze(-1) * d_rows).t() @ hidden.float()).to(ctx.row_dtype)
        return grad_hidden, grad_rows, None, None, None, None, None


def token_logprobs(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    allowed: Callable[[int, int], torch.Tensor] | None = None,
    chunk: int = 0,
) -> torch.Tensor:
    """``log_softmax(head(hidden) / temperature)[targets]``, (N, d) -> (N,), one chunk of
    ``chunk`` positions at a time (default: ``LOGITS_PER_CHUNK`` logits).

    ``allowed(start, stop)``: the (stop - start, vocab) mask of the tokens positions
    ``start:stop`` may take; the softmax is then over those alone. Under autograd at most one
    chunk of (positions, vocab) logits is ever alive, where the whole batch's logits, log-softmax
    and their gradients took ~0.8 GB per thousand positions of a 49k vocabulary in fp32: with a
    frozen base matrix (LoRA, trainable token rows) each chunk's derivatives are formed in the
    forward (``_FrozenHeadLogProbs``); otherwise each chunk is checkpointed and recomputed in
    the backward.
    """
    from torch.utils.checkpoint import checkpoint

    params = head_parameters(head)
    vocab = int(params.weight.shape[0]) if params else int(head(hidden[:1].detach()).shape[-1])
    size = chunk or max(1, LOGITS_PER_CHUNK // vocab)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    frozen = params is not None and not params.weight.requires_grad and (params.bias is None or not params.bias.requires_grad)
    if grad and frozen:
        return _FrozenHeadLogProbs.apply(hidden, params.row_weight, params, targets, temperature, allowed, size)

    def piece(h: torch.Tensor, t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        logits = _masked_logits(params.logits(h) if params else head(h), temperature, None if allowed is None else allowed(start, stop))
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    out = []
    for start in range(0, hidden.shape[0], size):
        stop = min(start + size, hidden.shape[0])
        args = (hidden[start:stop], targets[start:stop], start, stop)
        out.append(checkpoint(piece, *args, use_reentrant=False) if grad else piece(*args))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


class CompletionLoss(nn.Module):
    """Summed cross-entropy over labelled positions of a batch.

    Runs the decoder on every position but the vocabulary projection only where a label is set
    (on SmolLM2 the projection is ~20% of the forward FLOPs, and half the tokens are prompt),
    a chunk at a time (``token_logprobs``). LoRA dropout is done by ``lora_dropout.DropoutLoRAA``,
    which keeps each projection's input and a boolean mask where PEFT kept two float copies (half
    of the activations on CPU); PEFT's trainable token rows by ``token_rows``. How many rows run at
    once is the caller's choice (``train`` runs ``rows_per_pass`` rows per forward and backward).
    Being a module, it is what DDP wraps.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        from secondthoughts.lora_dropout import lean_lora_dropout

        lean_lora_dropout(lm)
        lean_token_rows(lm)
        self.lm = lm

    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lm = self.causal_lm()
        # attention_mask=None on purpose: position_ids carry the packing (see sequences.py).
        hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if not keep.any():  # filler rows only: a zero joined to every trainable weight (the head's too), as DDP needs
            return (hidden[:, :1].sum() + lm.get_output_embeddings()(hidden[:, :1]).sum()) * 0.0
        return -token_logprobs(lm.get_output_embeddings(), hidden[:, :-1][keep], targets[keep]).sum()
