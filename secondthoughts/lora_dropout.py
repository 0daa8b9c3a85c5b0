"""LoRA dropout that keeps a one-byte mask instead of two float copies of the input.

PEFT computes a LoRA branch as ``lora_B(lora_A(dropout(x)))``. On CPU, ``dropout`` keeps its
noise tensor (input-sized, float32) for the backward and ``lora_A`` keeps its input, the dropped
copy (float32 again): with dropout on every linear projection that was half of all the
activations training kept (1.2 of 2.2 MB per token on SmolLM2-135M). :class:`DropoutLoRAA` does
the dropout and the ``lora_A`` projection in one autograd function that keeps ``x`` itself (often
shared: q, k and v read the same input) and its boolean mask (a quarter of a float copy; drawing
the mask again in the backward instead cost more time than the bytes were worth). The values and
gradients are those of ``lora_A(x * mask / keep)`` with that mask (``keep``: 1 - p to 1/65536);
only which mask is drawn differs from ``nn.Dropout`` (a seed from torch's generator, so a seeded
run is repeatable and resumes exactly).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_STEPS = 65536  # a mask's resolution: one 16-bit lane per input


def _dropped(p: float) -> int:
    """How many of the 65536 values of a lane drop an input."""
    return round(p * _STEPS)


def keep_probability(p: float) -> float:
    """The share of inputs a mask keeps: ``1 - p`` with ``p`` in steps of 1/65536."""
    return 1 - _dropped(p) / _STEPS


def _mask(shape: torch.Size, p: float, seed: int, device: torch.device) -> torch.Tensor:
    # Four 16-bit lanes per 64-bit draw: a quarter of the generator calls of bernoulli_, which took
    # 14% of a training step on CPU.
    g = torch.Generator(device=device).manual_seed(seed)
    n = math.prod(shape)
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device, generator=g)
    return bits.view(torch.int16)[:n].view(shape) >= -(_STEPS // 2) + _dropped(p)


class _DropoutLinear(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        keep = _mask(x.shape, p, seed, x.device)
        # The scale 1 / keep goes on the (r, d) weight, not on the input-sized tensor.
        ctx.save_for_backward(x, weight, keep)
        ctx.scale = 1 / keep_probability(p)
        return torch.where(keep, x, 0) @ (weight.t() * ctx.scale)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, keep = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(keep, grad @ (weight.to(grad.dtype) * ctx.scale), 0).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = torch.where(keep, x, 0).reshape(-1, x.shape[-1])
            grad_w = ((grad.reshape(-1, grad.shape[-1]).t() @ dropped.to(grad.dtype)) * ctx.scale).to(weight.dtype)
        return grad_x, grad_w, None, None


class DropoutLoRAA(nn.Module):
    """``lora_A(dropout(x))`` of a PEFT LoRA layer with the memory of ``x`` alone (see the
    module docstring). Holds the original ``lora_A`` weight (same parameter, same state-dict
    key ``weight``), so saving, merging and loading the adapter are unchanged."""

    def __init__(self, lora_a: nn.Linear, p: float):
        super().__init__()
        if lora_a.bias is not None:
            raise ValueError("LoRA A with a bias is not supported")
        self.weight = lora_a.weight
        self.in_features, self.out_features, self.p = lora_a.in_features, lora_a.out_features, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return nn.functional.linear(x, self.weight)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.long))  # from torch's generator: seeded runs repeat
        return _DropoutLinear.apply(x, self.weight, self.p, seed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dropout={self.p}"


def lean_lora_dropout(model: nn.Module) -> int:
    """Replace, in place, each PEFT LoRA layer's ``dropout`` + ``lora_A`` by one
    :class:`DropoutLoRAA`; returns how many were replaced (0 without dropout)."""
    n = 0
    for module in model.modules():
        drops, heads = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(drops, nn.ModuleDict) or not isinstance(heads, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            head = dict(heads.items()).get(name)
            if isinstance(drop, nn.Dropout) and drop.p > 0 and type(head) is nn.Linear:
                heads[name] = DropoutLoRAA(head, drop.p)
                drops[name] = nn.Identity()
                n += 1
    return n
