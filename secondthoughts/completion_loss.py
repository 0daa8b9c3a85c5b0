"""Log-probabilities of completion tokens and the fine-tuning loss over them, projecting the
vocabulary only where a token is scored: ``token_logprobs`` (chunked, checkpointed under
autograd), ``head_parameters`` (the matrix a head multiplies by, built once a call) and
``CompletionLoss`` (what ``sft.train`` runs). Below training: the RL rollouts and the rewrite
likelihood score completions with the same function."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from secondthoughts.sequences import IGNORE_INDEX

LOGITS_PER_CHUNK = 2**23  # vocabulary logits projected at once (32 MB in fp32: ~170 positions on SmolLM2)


def head_parameters(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) that ``head`` multiplies by, or None where only calling it tells. PEFT's
    trainable token rows build their (vocab, d) matrix by copying the whole base matrix at every
    call; built here once per ``token_logprobs`` call, not per chunk and again in its backward."""
    layer = getattr(head, "token_adapter", head)  # peft's TrainableTokensWrapper holds the layer
    if hasattr(layer, "get_merged_weights") and hasattr(layer, "base_layer"):  # peft's TrainableTokensLayer
        base = layer.base_layer
        if layer.disable_adapters or not layer.active_adapters or layer.merged:
            return base.weight, getattr(base, "bias", None)
        return layer.get_merged_weights(layer.active_adapters), getattr(base, "bias", None)
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    return None  # another wrapper (e.g. LoRA on the head): call it


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
    ``start:stop`` may take; the softmax is then over those alone. Under autograd each chunk is
    checkpointed, so its logits are recomputed in the backward rather than kept: at most one
    chunk of (positions, vocab) logits is ever alive, where the whole batch's logits, log-softmax
    and their gradients took ~0.8 GB per thousand positions of a 49k vocabulary in fp32.
    """
    from torch.utils.checkpoint import checkpoint

    params = head_parameters(head)
    vocab = int(params[0].shape[0]) if params else int(head(hidden[:1].detach()).shape[-1])
    size = chunk or max(1, LOGITS_PER_CHUNK // vocab)

    def piece(h: torch.Tensor, t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        logits = (nn.functional.linear(h, *params) if params else head(h)).float()
        if temperature != 1.0:
            logits = logits / temperature
        if allowed is not None:
            logits = logits.masked_fill(~allowed(start, stop).to(logits.device), -float("inf"))
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
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
    in checkpointed chunks (``token_logprobs``). LoRA dropout is done by ``lora_dropout.DropoutLoRAA``,
    which keeps each projection's input and a seed where PEFT kept two float copies (half of
    the activations on CPU). How many rows run at once is the caller's choice (``train`` runs
    ``rows_per_pass`` rows per forward and backward). Being a module, it is what DDP wraps.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        from secondthoughts.lora_dropout import lean_lora_dropout

        lean_lora_dropout(lm)
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
