"""PEFT's trainable token rows (the edit tokens' embedding rows, shared by a tied output layer)
without a copy of the whole table per call.

PEFT's ``TrainableTokensLayer`` builds its (vocab, d) matrix at every call by copying the base
table and writing the trained rows into the copy (``index_copy``); its backward then computes,
zeroes and adds a full (vocab, d) gradient to keep 9 rows of it. On SmolLM2 (49k x 576) a copy
took 50-110 ms on this CPU, twice a decoding step (embedding and head) and a quarter of a training
step. Here the base table is used as it is and only the trained rows are replaced: in the
embedding at the positions holding those tokens, in the head's logits at those columns
(``HeadWeights``). Values and the rows' gradients are PEFT's (``tests/test_token_rows.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class HeadWeights:
    """What a head multiplies by: ``weight`` (vocab, d) and ``bias``, with the rows of token ids
    ``rows`` replaced by ``row_weight`` (None: no rows replaced). A bias is kept, as in the merged
    model (PEFT's own unmerged forward of a tied head drops it; tied heads have none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    row_weight: torch.Tensor | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(hidden, self.weight, self.bias)
        if self.rows is None:
            return out
        row_bias = None if self.bias is None else self.bias[self.rows]
        # in place: the projection's backward does not need its output, and the logits may be large
        return out.index_copy_(-1, self.rows, nn.functional.linear(hidden, self.row_weight, row_bias))


def replaced_rows(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(token ids, their rows) that a ``TrainableTokensLayer`` puts in place of its base layer's
    rows now; None when its adapters are off or merged."""
    if layer.disable_adapters or not layer.active_adapters or layer.merged:
        return None
    if len(layer.active_adapters) > 1:
        layer._check_overlapping_tokens(layer.active_adapters)  # PEFT's own check: two adapters, one row
    weight = layer.base_layer.weight
    ids = [torch.tensor(layer.token_indices[a], device=weight.device) for a in layer.active_adapters]
    rows = [layer.trainable_tokens_delta[a].to(weight) for a in layer.active_adapters]
    return torch.cat(ids), torch.cat(rows)


def head_parameters(head: nn.Module) -> HeadWeights | None:
    """What ``head`` multiplies by, or None where only calling it tells (e.g. LoRA on the head)."""
    layer = getattr(head, "token_adapter", head)  # peft's TrainableTokensWrapper holds the layer
    if hasattr(layer, "trainable_tokens_delta") and isinstance(getattr(layer, "base_layer", None), nn.Linear):
        replaced = replaced_rows(layer)
        return HeadWeights(layer.base_layer.weight, layer.base_layer.bias, *(replaced or (None, None)))
    if isinstance(head, nn.Linear):
        return HeadWeights(head.weight, head.bias)
    return None


def _embed(layer: Any, base: nn.Embedding, ids: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # PEFT's own call: the plain lookup (a scaled embedding's forward would scale twice), then its scale
    out = nn.functional.embedding(x, base.weight, base.padding_idx, sparse=base.sparse)
    slot = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=x.device)
    slot[ids] = torch.arange(len(ids), device=x.device)
    where = slot[x]
    out = torch.where((where >= 0).unsqueeze(-1), rows[where.clamp(min=0)], out)
    scale = layer._get_embed_scale() if hasattr(layer, "_get_embed_scale") else None
    return out if scale is None else out * scale.to(out.dtype)


def _lean_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    replaced = replaced_rows(layer)
    base = layer.base_layer
    if replaced is None or args or kwargs or not isinstance(base, (nn.Embedding, nn.Linear)):
        return type(layer).forward(layer, x, *args, **kwargs)  # PEFT's own (it also unmerges when off)
    if isinstance(base, nn.Embedding):
        return _embed(layer, base, *replaced, x)
    return HeadWeights(base.weight, base.bias, *replaced).logits(x)


def lean_token_rows(model: nn.Module) -> int:
    """Make every PEFT ``TrainableTokensLayer`` in ``model`` replace rows instead of copying its
    table (in place; parameters, state-dict keys, merging and saving unchanged); returns how many
    layers changed (0 when there are none or it was done before)."""
    n = 0
    for module in model.modules():
        if hasattr(module, "trainable_tokens_delta") and hasattr(module, "base_layer") and "forward" not in vars(module) and _leanable(module):
            module.forward = functools.partial(_lean_forward, module)
            n += 1
    return n


def _leanable(layer: Any) -> bool:
    """False for lookups that renormalize or reweigh whole-table rows (``max_norm``,
    ``scale_grad_by_freq``) or a trained padding row (its gradient is zero in PEFT's): those keep
    PEFT's forward. Decided once, when the layer is made lean, not at every call."""
    base = layer.base_layer
    if not isinstance(base, nn.Embedding):
        return True
    trained = {i for ids in layer.token_indices.values() for i in ids}
    return base.max_norm is None and not base.scale_grad_by_freq and base.padding_idx not in trained
