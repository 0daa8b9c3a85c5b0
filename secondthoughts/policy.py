"""A chain-of-edits run loaded as a policy to train further (refinement, DPO), and saved back as one
adapter: a LoRA run is merged into its base and a fresh LoRA put on top, so the adapter-disabled
model is the run itself (the reference, no second copy); the final adapter is the two concatenated."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secondthoughts import models
from secondthoughts.chain_text import SPECIAL_TOKENS


@dataclass
class AemLora:
    """The AEM adapter's LoRA factors, kept (a few MB) to write the final combined adapter."""

    base: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module name -> (A, B, scaling)
    targets: list[str]
    supported: bool


def lora_factors(model: Any, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {}):
            out[name] = (mod.lora_A[adapter].weight.detach().clone(), mod.lora_B[adapter].weight.detach().clone(), float(mod.scaling[adapter]))
    return out


def load_policy(
    run: str, *, lora_r: int, lora_alpha: int, seed: int, full: bool = False, train_tokens: bool = True, dtype: str = "auto"
) -> tuple[nn.Module, nn.Module | None, Any, AemLora | None]:
    """(policy, frozen reference or None when the adapter-disabled policy is the reference,
    tokenizer, the run's adapter factors when it was a LoRA run). ``full``: train all weights
    against a frozen copy; else a fresh LoRA (``lora_r``, ``lora_alpha``, A seeded by ``seed``; the
    edit tokens' rows too with ``train_tokens``) on the same modules as the run's."""
    if not run:
        raise ValueError("no policy: pass --policy runs/AEM (a `secondthoughts train` run)")
    torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model, tok = models.load(run, dtype=torch_dtype, device="cpu")
    vocab = tok.get_vocab()
    if not all(t in vocab for t in (*SPECIAL_TOKENS, models.SRC, models.SEP)):
        raise ValueError(f"{run} has no edit tokens: refine a run of `secondthoughts train --mode coe`")
    aem = None
    if hasattr(model, "peft_config"):
        cfg = model.peft_config["default"]
        targets = sorted({n.rsplit(".", 1)[-1] for n in lora_factors(model)})
        supported = not (cfg.rank_pattern or cfg.alpha_pattern or getattr(cfg, "use_dora", False) or cfg.modules_to_save)
        aem = AemLora(cfg.base_model_name_or_path, lora_factors(model), targets, supported)
        model = model.merge_and_unload()  # the run itself: the reference once the new adapter is off
    token_ids = models.edit_token_ids(tok)
    if full:
        model.requires_grad_(True)
        reference = copy.deepcopy(model).requires_grad_(False).eval()
        return model.eval(), reference, tok, aem
    model.requires_grad_(False)
    torch.manual_seed(seed)  # LoRA A matrices
    modules: Any = aem.targets if aem else "all-linear"
    policy = models.apply_lora(model, token_ids if train_tokens else (), r=lora_r, alpha=lora_alpha, dropout=0.0, target_modules=modules)
    return policy.eval(), None, tok, aem


def save_policy(policy: nn.Module, tokenizer: Any, path: Path, aem: AemLora | None, policy_source: str) -> str:
    """Write the final policy where ``models.load`` reads it; returns how it was stored.

    A LoRA on a merged LoRA AEM model becomes one adapter on the original base whose factors are
    the two adapters concatenated (``B1 s1 A1 + B2 s2 A2 = [B1 s1, B2 s2] [A1; A2]``, scaling 1):
    exact, and as small as the two together. Anything else is saved as a full model.
    """
    if hasattr(policy, "peft_config") and (aem is None or aem.supported):
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        cfg = copy.deepcopy(policy.peft_config["default"])
        state = get_peft_model_state_dict(policy, save_embedding_layers=False)  # the base rows are rebuilt by add_edit_tokens
        if aem is not None:
            rl = lora_factors(policy)
            if set(rl) != set(aem.factors):
                raise ValueError("the RL adapter does not cover the AEM adapter's modules; cannot combine them")
            r_total = 0
            for name, (a1, b1, s1) in aem.factors.items():
                a2, b2, s2 = rl[name]
                state[f"{name}.lora_A.weight"] = torch.cat([a1, a2.detach().cpu()], 0).contiguous()
                state[f"{name}.lora_B.weight"] = torch.cat([b1 * s1, b2.detach().cpu() * s2], 1).contiguous()
                r_total = a1.shape[0] + a2.shape[0]
            cfg.r, cfg.lora_alpha, cfg.use_rslora = r_total, r_total, False
            cfg.base_model_name_or_path = aem.base
            how = f"one LoRA adapter (AEM + RL, rank {r_total}) on {aem.base}"
        else:  # a LoRA on a fully fine-tuned AEM model: its base is that model's folder
            cfg.base_model_name_or_path = str(Path(policy_source).resolve() / "model") if (Path(policy_source) / "model").is_dir() else policy_source
            how = f"a LoRA adapter on {cfg.base_model_name_or_path}"
        path.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(str(path))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
        tokenizer.save_pretrained(path)
        return how
    full = copy.deepcopy(policy).merge_and_unload() if hasattr(policy, "peft_config") else policy
    full.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return "a full model"
