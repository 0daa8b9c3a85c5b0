"""lean.DropoutLoRAA: PEFT's dropout + lora_A with the memory of the input alone."""

import torch
from torch import nn

from secondthoughts.lora_dropout import (
    DropoutLoRAA,
    _mask,
    keep_probability,
    lean_lora_dropout,
)


def test_values_and_gradients_are_those_of_dropout_then_linear():
    torch.manual_seed(0)
    a = nn.Linear(12, 4, bias=False)
    lean = DropoutLoRAA(a, 0.3).train()
    x = torch.randn(2, 5, 12, requires_grad=True)
    torch.manual_seed(1)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.long))  # the seed forward will draw
    torch.manual_seed(1)
    out = lean(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    keep = _mask(x.shape, 0.3, seed, x.device)
    assert 0 < keep.float().mean() < 1
    x2 = x.detach().clone().requires_grad_(True)
    w2 = a.weight.detach().clone().requires_grad_(True)
    want = (x2 * keep / keep_probability(0.3)) @ w2.t()
    (want * g).sum().backward()
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert torch.allclose(a.weight.grad, w2.grad, atol=1e-5)
    lean.eval()
    assert torch.allclose(lean(x), x @ a.weight.t())


def test_masks_keep_the_share_they_say_and_repeat_by_seed():
    for p in (0.05, 0.3):
        keep = _mask(torch.Size((64, 1000)), p, seed=7, device=torch.device("cpu"))
        assert keep.shape == (64, 1000) and keep.dtype == torch.bool
        assert abs(keep.float().mean().item() - keep_probability(p)) < 0.01  # 64,000 draws: 4 sd ~ 0.004-0.007
        assert torch.equal(keep, _mask(torch.Size((64, 1000)), p, seed=7, device=torch.device("cpu")))
        assert not torch.equal(keep, _mask(torch.Size((64, 1000)), p, seed=8, device=torch.device("cpu")))
    assert _mask(torch.Size((3, 5)), 0.3, seed=1, device=torch.device("cpu")).shape == (3, 5)  # not a multiple of 4
    assert keep_probability(0.05) == 1 - 3277 / 65536


def test_a_peft_model_keeps_its_keys_and_trains(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"))
    keys = sorted(model.state_dict())
    assert lean_lora_dropout(model) > 0
    assert sorted(model.state_dict()) == keys
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for n, m in model.named_modules() if "lora_dropout" in n)
    ids = torch.randint(0, 50, (2, 9))
    model.eval()
    before = model(input_ids=ids).logits
    model.train()
    torch.manual_seed(3)
    model(input_ids=ids).logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)
    model.eval()
    assert torch.allclose(model(input_ids=ids).logits, before)
    assert lean_lora_dropout(model) == 0  # idempotent
