"""secondthoughts.token_rows: PEFT's trainable token rows without whole-table copies give PEFT's
values and gradients, and leave saving and merging as they were."""

from __future__ import annotations

import contextlib
import copy

import tiny
import torch
from tiny import peft_forwards

from secondthoughts.token_rows import HeadWeights, head_parameters, lean_token_rows


def _layers(model):
    base = model.get_base_model()
    return base.get_input_embeddings(), base.get_output_embeddings()


def test_lean_rows_give_pefts_values_and_row_gradients(lora_rows):
    """Embedding and tied head on ids mixing base tokens and trained rows, adapters on and off:
    PEFT's outputs and gradients (rows, hidden); the base table gets none."""
    model, ids = lora_rows
    emb, head = _layers(model)
    assert "forward" in vars(emb.token_adapter) and "forward" in vars(head.token_adapter)  # apply_lora made them lean
    table = emb.token_adapter.base_layer.weight
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    x = torch.tensor([[3, ids[0], 5, ids[2]], [ids[1], 7, ids[0], 2]])
    hidden = torch.randn(5, table.shape[1], requires_grad=True)
    for disabled in (False, True):
        with model.disable_adapter() if disabled else contextlib.nullcontext():
            got = (emb(x), head(hidden))
            with peft_forwards(model):
                want = (emb(x), head(hidden))
            for g, w in zip(got, want):
                assert torch.allclose(g, w, atol=1e-6)
            if not disabled:
                assert not torch.allclose(got[0][0, 1], table[ids[0]])  # the trained row, not the base's
                weights = (torch.randn_like(got[0]), torch.randn_like(got[1]))
                grads = [torch.autograd.grad(sum((o * r).sum() for o, r in zip(out, weights)), [delta, hidden]) for out in (got, want)]
                for g, w in zip(*grads):
                    assert w.abs().sum() > 0 and torch.allclose(g, w, atol=1e-5)
    assert not table.requires_grad


def test_head_weights_are_what_the_head_multiplies_by(lora_rows):
    model, ids = lora_rows
    _, head = _layers(model)
    hidden = torch.randn(4, head.token_adapter.base_layer.weight.shape[1])
    w = head_parameters(head)
    assert w is not None and w.rows.tolist() == ids and w.row_weight.shape == (len(ids), hidden.shape[1])
    with peft_forwards(model):
        assert torch.allclose(w.logits(hidden), head(hidden), atol=1e-6)
    plain = torch.nn.Linear(3, 5)
    assert head_parameters(plain) == HeadWeights(plain.weight, plain.bias)
    rows, row_weight = torch.tensor([4, 1]), torch.randn(2, 3)
    merged = plain.weight.detach().clone()
    merged[rows] = row_weight
    h = torch.randn(6, 3)
    assert torch.allclose(HeadWeights(plain.weight, plain.bias, rows, row_weight).logits(h), h @ merged.t() + plain.bias, atol=1e-6)
    assert head_parameters(torch.nn.Sequential(plain)) is None  # known only by calling it


def test_keys_merging_and_copies_are_unchanged(lora_rows, tiny_tok):
    from peft import get_peft_model

    from secondthoughts import models

    model, ids = lora_rows
    assert lean_token_rows(model) == 0  # done once by apply_lora
    x = torch.tensor([[3, ids[0], 5, ids[1], 9]])
    model.eval()
    lean_logits = model(input_ids=x).logits
    with peft_forwards(model):
        assert torch.allclose(model(input_ids=x).logits, lean_logits, atol=1e-5)
    plain = tiny.tiny_model(tiny_tok)  # the same adapter made by PEFT alone, never made lean
    models.add_edit_tokens(plain, tiny_tok)
    plain = get_peft_model(plain, model.peft_config["default"])
    assert not any("forward" in vars(m) for m in plain.modules())
    assert sorted(model.state_dict()) == sorted(plain.state_dict())
    twin = copy.deepcopy(model)  # refinement deep-copies its policy to merge it
    lean = [m for m in twin.modules() if "forward" in vars(m)]
    assert len(lean) == 2 and all(m.forward.args[0] is m for m in lean)  # bound to the copy's own layers
    assert torch.allclose(twin(input_ids=x).logits, lean_logits, atol=1e-5)
    merged = twin.merge_and_unload()
    assert torch.allclose(merged(input_ids=x).logits, lean_logits, atol=1e-4)
    assert torch.allclose(model(input_ids=x).logits, lean_logits)  # the copy's merge left the original alone
