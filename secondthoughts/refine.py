"""Refinement by reinforcement learning (Second Thoughts, stage 2): sample chains of edits from an
AEM model, apply them, score the re-aligned texts, and improve the policy against that reward
while staying close to the AEM model.

One step, per prompt (``context <|src|> source <|sep|>``, the AEM prompt):

1. **rollout**: ``k`` sampled chains (constrained decoding by default, so every chain applies;
   temperature / top-p / top-k / max_new_tokens exposed), each applied to the source.
2. **score**: ``reward(contexts, texts)`` of the re-aligned texts (any callable; default the
   value-alignment :class:`~secondthoughts.reward.RewardModel`) plus a validity term: a chain that
   does not parse, does not apply, or is cut by ``max_new_tokens`` scores ``-invalid_penalty``
   instead, and its error is logged.
3. **update**: the sequence KL to the frozen AEM model (sum over the chain's tokens of
   ``log pi - log pi_ref``, taken at rollout time) is subtracted, ``beta * KL``, from each reward
   (as in the RLOO paper and TRL's RLOOTrainer), so the KL that is logged is the one in the loss.
   Advantages: leave-one-out baseline over the ``k`` samples (RLOO), or the reward of a greedy
   decode (the LaMer baseline). Loss: token-level PPO-clipped policy gradient, summed over a
   chain's tokens and averaged over chains (plain REINFORCE when ``ppo_epochs`` is 1), plus the
   AIL hinge ``max(0, margin - (ll(expert) - ll(negative)))`` on mean per-token log-likelihoods,
   where the expert is the gold chain (``edits.infer_edits`` source -> target, compact form) and
   the negative either the lowest-reward sample of the prompt or a chain built the same way
   toward the unaligned text (target -> source, written after the target).

Reference model: a LoRA AEM run is merged into its base weights and a fresh LoRA is trained on
top, so the adapter-disabled model (``peft``'s ``disable_adapter()``) *is* the AEM model: no second
copy in memory. ``full=True`` (or a fully fine-tuned AEM run) trains all weights against a frozen
copy. Dropout stays off in the new adapter, so old and new log-probabilities agree at the first
update. Reward-hacking guards (``behaviour.py``) are logged every step: the share of outputs
identical to the source, the share copying a context sentence, the kept share of the source and
the mean chain length. Simplifications, said plainly: no value network, no minibatches inside a
step (every update sees the step's whole batch), and a chain cut by ``max_new_tokens`` counts as
invalid rather than being closed after its last edit.

Run folder (``RefineConfig.out``)::

    config.json      {"train": the AEM run's settings (so realign.run_info reads the mode),
                      "refine": RefineConfig, "policy": what was loaded, "plan", "env"}
    metrics.jsonl    one line per step (reward, kl, valid, identical, copies_context, ...) and per
                     evaluation ({"step", "eval_reward", "eval_valid", ...})
    reward.png       reward, KL-penalized reward, validity and KL against steps
    checkpoint/      trainable weights, optimizer, scheduler, per-process RNG states, step
    model/           the final policy; ``models.load(run)`` and ``Realigner(run)`` read it. For a
                     LoRA AEM run it is one LoRA adapter on the original base (the AEM and RL
                     adapters concatenated: rank r_aem + r_rl, exact)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from secondthoughts import behaviour, decoding, models, runs, settings
from secondthoughts.coherence import combined_reward
from secondthoughts.data import Example, read_examples
from secondthoughts.edits import (
    EOC,
    SPECIAL_TOKENS,
    Edit,
    EditError,
    apply_edits,
    detokenize,
    infer_edits,
    merge_close_edits,
    parse_chain,
    render_chain,
    tokenize,
)
from secondthoughts.plots import read_metrics, save_png
from secondthoughts.sequences import split_completion
from secondthoughts.sft import token_logprobs

RewardFn = Callable[[list[str], list[str]], list[float]]
BASELINES: tuple[str, ...] = ("rloo", "greedy")
NEGATIVES: tuple[str, ...] = ("sample", "reverse", "both")


_f = settings.setting


@dataclass
class RefineConfig:
    """Everything a refinement run depends on. Fields become ``secondthoughts refine`` flags."""

    policy: str = _f("", "the AEM model: a `secondthoughts train` run folder (LoRA or full)")
    reward: str = _f("", "reward: a `secondthoughts reward train` run folder, or module:function returning score(contexts, texts)")
    coherence: str = _f("", "coherence scorer (a `reward train --objective coherence` run, or module:function); the reward becomes "
                            "P(aligned) * P(coherent)^coherence_weight (empty: alignment alone, the paper)")
    coherence_weight: float = _f(1.0, "exponent of P(coherent) in the reward (with --coherence)")
    data: str = _f("", "training prompts JSONL (context, source, target); the target gives the AIL expert chain")
    out: str = _f("runs/refine", "run folder: config, metrics, reward curve, checkpoint, final model")
    eval_data: str = _f("", "held-out prompts JSONL, decoded greedily at the start, every --eval-every steps and at the end")
    eval_max: int = _f(100, "at most this many held-out prompts")
    eval_every: int = _f(0, "evaluate every N steps (0: only at the start and the end)")
    steps: int = _f(200, "refinement steps (each: rollout, score, update)")
    prompts_per_step: int = _f(8, "prompts per step per process")
    k: int = _f(4, "sampled chains per prompt (RLOO needs >= 2)")
    temperature: float = _f(1.0, "sampling temperature (the log-probs of the loss and the KL use it too)")
    top_p: float = _f(1.0, "nucleus sampling threshold (1: off)")
    top_k: int = _f(0, "top-k sampling (0: off)")
    max_new_tokens: int = _f(0, "chain budget in tokens (0: 3 per source token + 48, as realign); a chain cut by it is invalid")
    constrained: bool = _f(True, "constrained decoding: every sampled chain parses and applies")
    beta: float = _f(0.05, "KL penalty: reward minus beta times the chain's summed log-ratio to the AEM model")
    invalid_penalty: float = _f(1.0, "reward of a chain that does not parse, apply or finish (given as -penalty)")
    baseline: str = _f("rloo", "advantage baseline: leave-one-out over the k samples, or the reward of a greedy decode", choices=BASELINES)
    ppo_epochs: int = _f(1, "updates per batch; above 1 the importance ratio is clipped (PPO)")
    clip_eps: float = _f(0.2, "PPO clip range of the per-token importance ratio")
    ail_weight: float = _f(1.0, "weight of the AIL hinge (expert chain above negatives); 0 turns it off")
    ail_margin: float = _f(0.5, "AIL margin in mean log-likelihood per token (LaMer: 0.5)")
    ail_negative: str = _f("sample", "AIL negatives: the lowest-reward sample, the chain toward the unaligned text, or both", choices=NEGATIVES)
    ail_costs: str = _f("1,1,2", "insert,delete,replace costs for the expert (and reverse) chains")
    lr: float = _f(2e-5, "learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(0, "linear warmup steps, then constant")
    max_grad_norm: float = _f(1.0, "gradient clipping (0: off)")
    full: bool = _f(False, "train all weights (a frozen copy is the reference) instead of a new LoRA on the merged AEM model")
    lora_r: int = _f(16, "rank of the new LoRA adapter")
    lora_alpha: int = _f(32, "alpha of the new LoRA adapter")
    train_tokens: bool = _f(True, "also train the rows of the edit marker tokens")
    gradient_checkpointing: bool = _f(True, "recompute each layer's activations in the update's backward: the same gradients in "
                                            "less memory (8 x 4 samples on the embedded model: 2.9 GB, not 4.2), at about 0.8x the speed")
    reward_batch_size: int = _f(32, "texts per batch of the reward model")
    checkpoint_every: int = _f(10, "write a resumable checkpoint every N steps (and at the end)")
    seed: int = _f(0, "seeds prompt order, LoRA init and sampling (per step and process, so resume is exact)")
    dtype: str = _f("auto", "weights dtype: auto (fp32; bf16 autocast on CUDA), float32, bfloat16", choices=("auto", "float32", "bfloat16"))
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.ail_negative not in NEGATIVES:
            raise ValueError(f"ail_negative must be one of {NEGATIVES}, got {self.ail_negative!r}")
        if self.baseline == "rloo" and self.k < 2:
            raise ValueError("the leave-one-out baseline needs k >= 2 samples per prompt (or --baseline greedy)")
        for name in ("steps", "prompts_per_step", "k", "ppo_epochs", "checkpoint_every", "lora_r", "reward_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta", "invalid_penalty", "clip_eps", "ail_weight", "ail_margin", "lr", "max_new_tokens", "eval_every", "coherence_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError(f"need 0 < top_p <= 1 and temperature > 0, got top_p={self.top_p}, temperature={self.temperature}")
        self.costs  # noqa: B018 - validates ail_costs now, not mid-run

    @property
    def costs(self) -> tuple[float, float, float]:
        try:
            c = tuple(float(x) for x in self.ail_costs.split(","))
        except ValueError:
            c = ()
        if len(c) != 3 or min(c) <= 0:
            raise ValueError(f"ail_costs is 'insert,delete,replace' with positive numbers, got {self.ail_costs!r}")
        return c  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RefineConfig:
        return settings.from_dict(cls, d, "refinement settings")


# ---------------------------------------------------------------- the loss pieces (plain functions)


def total_rewards(scores: torch.Tensor, valid: torch.Tensor, invalid_penalty: float) -> torch.Tensor:
    """Alignment score for a valid chain, ``-invalid_penalty`` for one that did not parse, apply or
    finish (its score, if any, is ignored: the text it would give does not exist)."""
    return torch.where(valid, scores, torch.full_like(scores, -invalid_penalty))


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence: the sum over its tokens of ``log pi - log pi_ref`` (the sampled-token estimate
    of KL(pi || pi_ref)). Shapes (N, T) -> (N,)."""
    return ((logps - ref_logps) * mask).sum(-1)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Reward minus the mean reward of the other ``k - 1`` samples of the same prompt; rewards are
    grouped as [prompt 0: k samples, prompt 1: k samples, ...]."""
    if k < 2 or rewards.numel() % k:
        raise ValueError(f"RLOO needs k >= 2 and whole groups: {rewards.numel()} rewards, k={k}")
    g = rewards.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).view(-1)


def greedy_advantages(rewards: torch.Tensor, baseline: torch.Tensor, k: int) -> torch.Tensor:
    """Reward minus the reward of the prompt's greedy decode (``baseline``: one per prompt)."""
    if rewards.numel() != baseline.numel() * k:
        raise ValueError(f"{rewards.numel()} rewards for {baseline.numel()} baselines and k={k}")
    return (rewards.view(-1, k) - baseline.view(-1, 1)).view(-1)


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with
    ``r = exp(logp - old_logp)`` and the sequence's advantage ``A``, summed over each sequence's
    tokens and averaged over sequences. At ``r == 1`` its gradient is REINFORCE's,
    ``-A * grad log pi(chain)``. Returns (loss, share of tokens whose ratio was clipped)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(-1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    loss = (per_token * mask).sum(-1).mean()
    clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0) & mask.bool()
    return loss, clipped.sum() / mask.sum().clamp(min=1)


def mean_token_logp(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalized log-likelihood per sequence, so chains of different lengths compare."""
    return (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def ail_hinge(expert_ll: torch.Tensor, negative_ll: torch.Tensor, margin: float) -> torch.Tensor:
    """The imitation contrast: mean of ``max(0, margin - (expert_ll - negative_ll))``."""
    return F.relu(margin - (expert_ll - negative_ll)).mean()


# ---------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One step's samples, grouped by prompt: sample ``i`` belongs to prompt ``i // k``."""

    examples: list[Example]  # P prompts
    k: int
    prompt_ids: list[list[int]]  # P
    completion_ids: list[list[int]]  # P * k, each ending with <|eoc|> when it finished
    chains: list[list[Edit]]  # P * k, empty when invalid
    texts: list[str]  # P * k, the chain applied (the source when invalid)
    valid: list[bool]  # P * k
    errors: list[str | None]  # P * k, why invalid
    greedy: Rollout | None = None  # the greedy baseline decode (k = 1), when used
    scores: torch.Tensor | None = None  # (P * k,) alignment (times coherence^w, with a coherence scorer; 0 where invalid), by score()
    rewards: torch.Tensor | None = None  # (P * k,) scores with the validity term, set by score()
    coherence: torch.Tensor | None = None  # (P * k,) P(coherent) (0 where invalid), with a coherence scorer
    alignment: torch.Tensor | None = None  # (P * k,) P(aligned) alone (0 where invalid), with a coherence scorer

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def contexts(self) -> list[str]:
        return [self.examples[i // self.k].context for i in range(len(self))]

    @property
    def sources(self) -> list[str]:
        return [self.examples[i // self.k].source for i in range(len(self))]


def read_chain(vocab: Any, source: str, ids: Sequence[int], finished: bool, chain_format: str) -> tuple[list[Edit], str, str | None]:
    """(chain, text, error) of generated chain ids in ``chain_format``: the text is the chain
    applied to the source, or the source itself with the reason when the chain does not parse,
    apply or finish."""
    if not finished:
        return [], source, f"no {EOC} within {len(ids)} new tokens"
    chain_text, _ = split_completion(vocab.decode(ids))
    try:
        chain = parse_chain(chain_text, source, chain_format)
        return chain, detokenize(apply_edits(tokenize(source), chain)), None  # type: ignore[arg-type]
    except EditError as e:
        return [], source, str(e)


def batch_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, so every completion starts in the
    same column (position ids follow the attention mask, as in generation)."""
    wp, wc = max(map(len, prompts)), max(1, max(map(len, completions)))
    n = len(prompts)
    ids = torch.full((n, wp + wc), pad_id, dtype=torch.long)
    attn = torch.zeros((n, wp + wc), dtype=torch.long)
    comp = torch.full((n, wc), pad_id, dtype=torch.long)
    cmask = torch.zeros((n, wc), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, wp - len(p) : wp] = torch.tensor(list(p), dtype=torch.long)
        ids[i, wp : wp + len(c)] = torch.tensor(list(c), dtype=torch.long)
        attn[i, wp - len(p) : wp + len(c)] = 1
        comp[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        cmask[i, : len(c)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_ids": comp, "completion_mask": cmask}


class CompletionLogProbs(nn.Module):
    """Per-token log-probabilities of the completion tokens, (N, T) with zeros on padding.

    Runs the vocabulary projection only on completion positions (as ``sft.CompletionLoss``),
    a chunk of positions at a time (``sft.token_logprobs``); a module, so that DDP wraps it.
    ``allow``: the tokens the constraint allowed at each completion position, as
    ``constrained.CompletionSets`` (built into a mask one chunk at a time) or a dense (completion
    tokens, vocab) mask: normalize over those, the distribution constrained decoding samples
    from. ``temperature``: the sampling temperature, so the ratio and the KL are those of the
    distribution the chains came from (top-p / top-k truncation is not modelled, as in TRL).
    """

    def __init__(self, lm: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.lm = lm
        self.temperature = temperature

    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
        allow: Any = None,
    ) -> torch.Tensor:  # fmt: skip
        lm = self.causal_lm()
        width = input_ids.shape[1] - completion_ids.shape[1]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        keep = completion_mask.bool()
        allowed = None if allow is None else allow.dense if hasattr(allow, "dense") else lambda a, b: allow[a:b]
        lp = token_logprobs(lm.get_output_embeddings(), hidden[:, width - 1 : -1][keep], completion_ids[keep], temperature=self.temperature, allowed=allowed)
        return torch.zeros(completion_ids.shape, dtype=lp.dtype, device=lp.device).masked_scatter(keep, lp)


def row_slice(rows: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of ``batch_rows``' output (and their constraint sets), without the
    columns that are padding in all of them (results are those of the whole batch's rows)."""
    cm = rows["completion_mask"]
    width = rows["input_ids"].shape[1] - cm.shape[1]
    used = rows["attention_mask"][start:stop].any(0).nonzero()
    first = min(int(used[0]) if len(used) else width, width)
    wc = max(1, int(cm[start:stop].sum(1).max()))
    out = {
        "input_ids": rows["input_ids"][start:stop, first : width + wc], "attention_mask": rows["attention_mask"][start:stop, first : width + wc],
        "completion_ids": rows["completion_ids"][start:stop, :wc], "completion_mask": cm[start:stop, :wc],
    }  # fmt: skip
    if rows.get("allow") is not None:
        lengths = [0, *cm.sum(1).long().cumsum(0).tolist()]
        allow = rows["allow"]
        out["allow"] = allow.part(lengths[start], lengths[stop]) if hasattr(allow, "part") else allow[lengths[start] : lengths[stop]]
    return out


# ---------------------------------------------------------------- loading


def load_reward(spec: str, *, batch_size: int = 32, device: torch.device | str | None = None) -> RewardFn:
    """A reward run or ensemble folder (``reward.load``) or ``module:function`` naming a callable."""
    from secondthoughts.reward import load_scorer

    return load_scorer(spec, batch_size=batch_size, device=device)


@dataclass
class _AemLora:
    """The AEM adapter's LoRA factors, kept (a few MB) to write the final combined adapter."""

    base: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module name -> (A, B, scaling)
    targets: list[str]
    supported: bool


def _lora_factors(model: Any, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {}):
            out[name] = (mod.lora_A[adapter].weight.detach().clone(), mod.lora_B[adapter].weight.detach().clone(), float(mod.scaling[adapter]))
    return out


def load_policy(config: RefineConfig) -> tuple[nn.Module, nn.Module | None, Any, _AemLora | None]:
    """(policy, frozen reference or None when the adapter-disabled policy is the reference,
    tokenizer, the AEM adapter's factors when it was a LoRA run)."""
    if not config.policy:
        raise ValueError("no policy: pass --policy runs/AEM (a `secondthoughts train` run)")
    dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    model, tok = models.load(config.policy, dtype=dtype, device="cpu")
    vocab = tok.get_vocab()
    if not all(t in vocab for t in (*SPECIAL_TOKENS, models.SRC, models.SEP)):
        raise ValueError(f"{config.policy} has no edit tokens: refine a run of `secondthoughts train --mode coe`")
    aem = None
    if hasattr(model, "peft_config"):
        cfg = model.peft_config["default"]
        targets = sorted({n.rsplit(".", 1)[-1] for n in _lora_factors(model)})
        supported = not (cfg.rank_pattern or cfg.alpha_pattern or getattr(cfg, "use_dora", False) or cfg.modules_to_save)
        aem = _AemLora(cfg.base_model_name_or_path, _lora_factors(model), targets, supported)
        model = model.merge_and_unload()  # the AEM model itself: the reference once RL's adapter is off
    token_ids = models.edit_token_ids(tok)
    if config.full:
        model.requires_grad_(True)
        reference = copy.deepcopy(model).requires_grad_(False).eval()
        return model.eval(), reference, tok, aem
    model.requires_grad_(False)
    torch.manual_seed(config.seed)  # LoRA A matrices
    targets: Any = aem.targets if aem else "all-linear"
    policy = models.apply_lora(model, token_ids if config.train_tokens else (), r=config.lora_r, alpha=config.lora_alpha, dropout=0.0, target_modules=targets)
    return policy.eval(), None, tok, aem


def save_policy(policy: nn.Module, tokenizer: Any, path: Path, aem: _AemLora | None, policy_source: str) -> str:
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
            rl = _lora_factors(policy)
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


# ---------------------------------------------------------------- the refiner


@dataclass
class RefineState:
    """What a checkpoint restores besides tensors."""

    step: int = 0
    samples: int = 0  # sampled chains, all processes
    elapsed_s: float = 0.0


@dataclass
class RefineResult:
    out: Path
    state: RefineState
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main_process: bool = True


class Refiner:
    """The RL stage as step-level calls beside a loop::

        r = Refiner(RefineConfig(policy="runs/aem", reward="runs/reward", data="train.jsonl", out="runs/rl"))
        batch = r.rollout(examples[:8], seed=0)   # sample k chains per prompt and apply them
        r.score(batch)                           # alignment + validity rewards
        stats = r.update(batch)                  # KL, advantages, clipped loss + AIL, optimizer step
        r.train()                                # or the whole run with checkpoints and metrics

    ``reward_fn``: any ``score(contexts, texts) -> list[float]``; default ``load_reward(config.reward)``;
    ``coherence_fn`` likewise (default: ``config.coherence``, none when empty): the reward is then
    ``coherence.combined_reward`` of the two.
    """

    def __init__(self, config: RefineConfig, reward_fn: RewardFn | None = None, coherence_fn: RewardFn | None = None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        from secondthoughts.constrained import EditVocab
        from secondthoughts.decoding import chain_format, run_info

        self.config = config
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and config.dtype == "auto"
        # cpu=True without CUDA: torchrun's LOCAL_RANK/WORLD_SIZE then mean DDP over gloo (see sft.train).
        self.accelerator = Accelerator(mixed_precision="bf16" if cuda_bf16 else "no", cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        self.aem_info = run_info(config.policy) or {}
        self.chain_format = chain_format(self.aem_info)  # as the policy writes chains
        gap = self.aem_info.get("merge_gap", -1)
        self.merge_gap = gap if gap >= 0 else None  # expert chains as the policy learned them
        if self.aem_info.get("mode", "coe") != "coe":
            raise ValueError(f"{config.policy} was trained with --mode {self.aem_info['mode']}: refinement needs a chain-of-edits run")
        self.policy, self.reference, self.tokenizer, self.aem = load_policy(config)
        self.policy.to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        self.reward_fn = reward_fn or load_reward(config.reward, batch_size=config.reward_batch_size, device=self.device)
        self.coherence_fn = coherence_fn or (load_reward(config.coherence, batch_size=config.reward_batch_size, device=self.device) if config.coherence else None)
        self.vocab = EditVocab.from_tokenizer(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.max_length = self.aem_info.get("max_length")
        self.logprobs = CompletionLogProbs(self.policy, config.temperature)
        if config.gradient_checkpointing:  # applies in train mode only: the update's forward (see update)
            models.enable_checkpointing(self.logprobs.causal_lm())
        self.params = [p for p in self.logprobs.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler("constant_with_warmup", self.optimizer, num_warmup_steps=config.warmup_steps)
        self.ddp = self.accelerator.prepare(self.logprobs)

    # ------------------------------------------------------------ rollout

    def prompt_ids(self, ex: Example) -> list[int]:
        """The AEM prompt, with the context cut from the left as ``Realigner`` cuts it (:mod:`~secondthoughts.decoding`)."""
        return decoding.prompt_ids(self.tokenizer, ex.context, ex.source, self.max_length)

    def _budget(self, examples: Sequence[Example]) -> int:
        return self.config.max_new_tokens or decoding.new_token_budget(self.tokenizer, [e.source for e in examples], "apply")

    def rollout(self, examples: Sequence[Example], *, k: int | None = None, greedy: bool = False, seed: int | None = None) -> Rollout:
        """``k`` sampled chains per prompt (greedy: one greedy chain), applied to the sources; with
        the greedy baseline configured, a sampled rollout also carries its greedy decode."""
        from secondthoughts.constrained import ChainConstraint

        examples = list(examples)
        if not examples:
            raise ValueError("rollout needs at least one example")
        k = 1 if greedy else (k or self.config.k)
        if seed is not None:
            torch.manual_seed(seed)
        prompts = [self.prompt_ids(e) for e in examples]
        ids, mask = decoding.left_padded(prompts, self.pad_id)
        width = ids.shape[1]
        stops = decoding.stop_ids(self.tokenizer, self.vocab.eoc, "apply")
        processor = ChainConstraint(self.vocab, [e.source for e in examples], width, chain_format=self.chain_format) if self.config.constrained else None
        search: dict[str, Any] = {"do_sample": False}
        if not greedy:
            search = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p, "top_k": self.config.top_k, "num_return_sequences": k}
        out = decoding.generate(self.policy, ids, mask, self._budget(examples), stops, self.pad_id, [processor] if processor else [], **search)
        comps, chains, texts, valid, errors = [], [], [], [], []
        stop_set = set(stops)
        for row, gen in enumerate(out):
            end = next((j for j, t in enumerate(gen) if t in stop_set), None)
            cut = gen[: end + 1] if end is not None else gen
            chain, text, err = read_chain(self.vocab, examples[row // k].source, cut, end is not None and cut[-1] == self.vocab.eoc, self.chain_format)
            if end is not None and cut[-1] != self.vocab.eoc:
                err = f"ended (EOS) before {EOC}"
            comps.append(cut)
            chains.append(chain)
            texts.append(text)
            valid.append(err is None)
            errors.append(err)
        batch = Rollout(examples, k, prompts, comps, chains, texts, valid, errors)
        if not greedy and self.config.baseline == "greedy":
            batch.greedy = self.rollout(examples, greedy=True)
        return batch

    # ------------------------------------------------------------ reward

    def score(self, batch: Rollout) -> torch.Tensor:
        """Alignment score of each valid re-aligned text plus the validity term (sets
        ``batch.scores`` and ``batch.rewards``; the greedy decode too). Returns ``batch.rewards``."""
        parts = [batch] + ([batch.greedy] if batch.greedy is not None else [])
        todo = [(b, i) for b in parts for i in range(len(b)) if b.valid[i]]
        contexts, texts = [b.contexts[i] for b, i in todo], [b.texts[i] for b, i in todo]
        got = self.reward_fn(contexts, texts) if todo else []
        if len(got) != len(todo):
            raise ValueError(f"the reward function returned {len(got)} scores for {len(todo)} texts")
        coh = self.coherence_fn(contexts, texts) if todo and self.coherence_fn is not None else None
        if coh is not None:
            if len(coh) != len(todo):
                raise ValueError(f"the coherence function returned {len(coh)} scores for {len(todo)} texts")
            got_a, got_c = iter(float(x) for x in got), iter(float(x) for x in coh)
            for b in parts:
                b.alignment = torch.tensor([next(got_a) if v else 0.0 for v in b.valid], dtype=torch.float32)
                b.coherence = torch.tensor([next(got_c) if v else 0.0 for v in b.valid], dtype=torch.float32)
            got = combined_reward([float(x) for x in got], [float(x) for x in coh], self.config.coherence_weight)
        values = iter(float(x) for x in got)
        for b in parts:
            b.scores = torch.tensor([next(values) if v else 0.0 for v in b.valid], dtype=torch.float32)
            b.rewards = total_rewards(b.scores, torch.tensor(b.valid), self.config.invalid_penalty)
        return batch.rewards  # type: ignore[return-value]

    # ------------------------------------------------------------ update

    def _rows(self, prompts: list[list[int]], comps: list[list[int]], sources: list[str]) -> tuple[dict[str, Any], int]:
        """Model inputs for completions after prompts; under constrained decoding with the tokens
        the constraint allowed at each completion position (``"allow"``, index sets;
        ``sources``: each row's source), and how many completion tokens fell outside those sets."""
        rows: dict[str, Any] = {k: v.to(self.device) for k, v in batch_rows(prompts, comps, self.pad_id).items()}
        outside = 0
        if self.config.constrained:
            from secondthoughts.constrained import completion_sets

            size = self.logprobs.causal_lm().get_output_embeddings().weight.shape[0]
            rows["allow"] = completion_sets(self.vocab, sources, comps, size, chain_format=self.chain_format)
            outside = rows["allow"].outside
        return rows, outside

    def sample_rows(self, batch: Rollout) -> tuple[dict[str, Any], int]:
        """Model inputs of a rollout's samples (and the tokens outside the constraint's sets)."""
        return self._rows([batch.prompt_ids[i // batch.k] for i in range(len(batch))], batch.completion_ids, batch.sources)

    def _by_rows(self, fn: Callable[[dict[str, Any]], torch.Tensor], rows: dict[str, Any]) -> torch.Tensor:
        """``fn`` (a no-grad log-prob pass) over ``k`` rows at a time, the results as one (N, T)
        tensor: the activations of a few rows are alive at once, not those of the batch."""
        n, t = rows["completion_ids"].shape
        out = torch.zeros((n, t), dtype=torch.float32, device=self.device)
        for a in range(0, n, self.config.k):
            got = fn(row_slice(rows, a, min(a + self.config.k, n)))
            out[a : a + got.shape[0], : got.shape[1]] = got
        return out

    def reference_logprobs(self, rows: dict[str, Any]) -> torch.Tensor:
        """Log-probabilities under the frozen AEM model: the adapter-disabled policy, or the copy."""
        with torch.no_grad(), self.accelerator.autocast():
            if self.reference is not None:
                ref = CompletionLogProbs(self.reference, self.config.temperature)
                return self._by_rows(lambda r: ref(**r).float(), rows)
            with self.policy.disable_adapter():
                return self._by_rows(lambda r: self.logprobs(**r).float(), rows)

    def policy_logprobs(self, rows: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad(), self.accelerator.autocast():
            return self._by_rows(lambda r: self.logprobs(**r).float(), rows)

    def _ail_rows(self, batch: Rollout) -> tuple[list[list[int]], list[list[int]], list[str]]:
        """Expert chains (gold, source -> target) and, for ``reverse`` negatives, the chain built the
        same way toward the unaligned text (target -> source) after a prompt holding the target."""
        prompts: list[list[int]] = []
        comps: list[list[int]] = []
        sources: list[str] = []
        costs = self.config.costs
        for ex, p in zip(batch.examples, batch.prompt_ids):
            prompts.append(p)
            comps.append(self._chain_ids(self._expert(ex.source, ex.target, costs), ex.source))
            sources.append(ex.source)
        if self.config.ail_negative in ("reverse", "both"):
            for ex in batch.examples:
                prompts.append(self.prompt_ids(Example(ex.context, ex.target, ex.source, ex.id)))
                comps.append(self._chain_ids(self._expert(ex.target, ex.source, costs), ex.target))
                sources.append(ex.target)
        return prompts, comps, sources

    def _expert(self, source: str, target: str, costs: tuple[float, float, float]) -> list[Edit]:
        tokens = tokenize(source)
        chain = infer_edits(tokens, tokenize(target), *costs)
        return chain if self.merge_gap is None else merge_close_edits(tokens, chain, self.merge_gap)

    def _chain_ids(self, chain: list[Edit], source: str) -> list[int]:
        # Tokenized as sequences.encode_completion tokenizes training chains.
        return list(self.tokenizer(render_chain(chain, source, self.chain_format), add_special_tokens=False)["input_ids"])

    def _group_rows(self, batch: Rollout, g: int, ail: tuple[list[list[int]], list[list[int]], list[str]]) -> tuple[dict[str, Any], int]:
        """Model inputs of prompt ``g``'s ``k`` samples followed by its AIL rows (the expert chain,
        then the reverse chain when used), and the tokens outside the constraint's sets."""
        k, p = batch.k, len(batch.examples)
        mine = [g, p + g][: len(ail[0]) // p] if ail[0] else []
        return self._rows(
            [batch.prompt_ids[g]] * k + [ail[0][j] for j in mine],
            batch.completion_ids[g * k : (g + 1) * k] + [ail[1][j] for j in mine],
            [batch.examples[g].source] * k + [ail[2][j] for j in mine],
        )

    @contextlib.contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """Train mode for the update's forward and backward when gradient checkpointing is on (it
        applies only in train mode). The RL adapter has no dropout and the model none either, so
        the log-probs are those of eval mode; eval mode is restored after."""
        self.policy.train(self.config.gradient_checkpointing)
        try:
            yield
        finally:
            self.policy.eval()

    def update(self, batch: Rollout) -> dict[str, float]:
        """KL-penalized rewards, advantages, and ``ppo_epochs`` optimizer steps on this batch
        (this process's share; DDP averages the gradients). Returns this process's statistics.

        The loss is a sum over prompts (the RLOO baseline and the AIL hinge only compare rows
        of one prompt), so each prompt's rows (its ``k`` samples and AIL rows) run forward and
        backward on their own and the gradients add up to the whole batch's: the activations
        of one prompt's rows are alive at a time, not those of the batch."""
        if batch.rewards is None:
            raise ValueError("score(batch) first: update needs the rewards")
        cfg = self.config
        n, k, p = len(batch), batch.k, len(batch.examples)
        use_ail = cfg.ail_weight > 0
        ail = self._ail_rows(batch) if use_ail else ([], [], [])
        groups = [self._group_rows(batch, g, ail) for g in range(p)]
        outside = sum(o for _, o in groups)
        refs = [F.pad(self.reference_logprobs(row_slice(rows, 0, k)), (0, rows["completion_ids"].shape[1])) for rows, _ in groups]
        rewards = batch.rewards.to(self.device)
        g_total = None
        if batch.greedy is not None:
            g = batch.greedy
            g_rows, _ = self.sample_rows(g)
            g_kl = sequence_kl(self.policy_logprobs(g_rows), self.reference_logprobs(g_rows), g_rows["completion_mask"])
            g_total = g.rewards.to(self.device) - cfg.beta * g_kl  # type: ignore[union-attr]
        lowest = batch.rewards.view(p, k).argmin(1).tolist()  # each prompt's lowest-reward sample
        olds: list[torch.Tensor] = []
        kls: list[torch.Tensor] = []
        advantages: list[torch.Tensor] = []
        stats: dict[str, float] = {}
        sums = dict.fromkeys(("log_ratio", "tokens", "policy_loss", "loss", "ail_loss", "ail_gap", "expert_ll"), 0.0)
        with self._checkpointing():
            for epoch in range(cfg.ppo_epochs):
                clipped = tokens = 0.0
                for g, (rows, _) in enumerate(groups):
                    mask = rows["completion_mask"][:k]
                    ref = refs[g][:, : mask.shape[1]]  # padded to the group's width (its AIL rows may be longer)
                    # DDP: gradients are averaged across processes once, at the last prompt's backward.
                    with self.accelerator.no_sync(self.ddp) if g < p - 1 else contextlib.nullcontext():
                        with self.accelerator.autocast():
                            logps = self.ddp(**rows).float()
                        if epoch == 0:
                            # Old log-probs are this first forward's, detached: at the first update the
                            # ratio is exactly 1 and no separate no-grad pass is needed.
                            olds.append(logps[:k].detach())
                            kls.append(sequence_kl(olds[g], ref, mask))
                            total = rewards[g * k : (g + 1) * k] - cfg.beta * kls[g]
                            advantages.append(rloo_advantages(total, k) if g_total is None else greedy_advantages(total, g_total[g : g + 1], k))
                            sums["log_ratio"] += float(((olds[g] - ref) * mask).sum())
                            sums["tokens"] += float(mask.sum())
                        policy_loss, clip_frac = clipped_policy_loss(logps[:k], olds[g], advantages[g], mask, cfg.clip_eps)
                        loss = policy_loss * (k / n)  # clipped_policy_loss averages over its k chains; the batch's over n
                        if use_ail:
                            cm = rows["completion_mask"]
                            expert_ll = mean_token_logp(logps[k : k + 1], cm[k : k + 1])
                            negatives = []
                            if cfg.ail_negative in ("sample", "both"):
                                j = lowest[g]
                                negatives.append(mean_token_logp(logps[j : j + 1], cm[j : j + 1]))
                            if cfg.ail_negative in ("reverse", "both"):
                                negatives.append(mean_token_logp(logps[k + 1 : k + 2], cm[k + 1 : k + 2]))
                            ail_loss = torch.stack([ail_hinge(expert_ll, neg, cfg.ail_margin) for neg in negatives]).mean()
                            loss = loss + cfg.ail_weight * ail_loss / p  # the hinge is averaged over prompts
                            if epoch == 0:
                                sums["ail_loss"] += ail_loss.item() / p
                                sums["ail_gap"] += torch.stack([expert_ll - neg for neg in negatives]).mean().item() / p
                                sums["expert_ll"] += expert_ll.item() / p
                        self.accelerator.backward(loss)
                    if epoch == 0:
                        sums["policy_loss"] += policy_loss.item() * k / n
                        sums["loss"] += loss.item()
                    clipped += float(clip_frac) * float(mask.sum())
                    tokens += float(mask.sum())
                    del logps, loss, policy_loss  # this prompt's graph is gone before the next forward
                if cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                stats["clip_frac"] = clipped / max(tokens, 1.0)
        self.scheduler.step()
        kl, adv = torch.cat(kls), torch.cat(advantages)
        total = rewards - cfg.beta * kl
        stats.update(objective=float(total.mean()), kl=float(kl.mean()), kl_per_token=sums["log_ratio"] / max(sums["tokens"], 1.0),
                     advantage_abs=float(adv.abs().mean()), outside_constraint=float(outside),
                     policy_loss=sums["policy_loss"], loss=sums["loss"])  # fmt: skip
        if use_ail:
            stats.update(ail_loss=sums["ail_loss"], ail_gap=sums["ail_gap"], expert_ll=sums["expert_ll"])
        self.last_kl = kl  # the per-sample KL that entered the rewards (tests read it)
        self.last_advantages = adv
        return stats

    # ------------------------------------------------------------ one step and its statistics

    def step_stats(self, batch: Rollout) -> dict[str, float]:
        """Sums over this process's samples (reduced across processes by the loop)."""
        valid = [i for i in range(len(batch)) if batch.valid[i]]
        ctx, src = batch.contexts, batch.sources
        guards = behaviour.summarize([ctx[i] for i in valid], [src[i] for i in valid], [batch.texts[i] for i in valid]) if valid else {}
        nv = len(valid)
        return {
            "n": len(batch), "n_valid": nv,
            "reward": float(batch.rewards.sum()),  # type: ignore[union-attr]
            "score": float(batch.scores.sum()),  # type: ignore[union-attr]
            **{k: guards.get(k, 0) * nv for k in GUARDS},
            **({"coherence": float(batch.coherence.sum()), "alignment": float(batch.alignment.sum())}  # type: ignore[union-attr]
               if batch.coherence is not None else {}),
            "edits": sum(len(c) for c in batch.chains),
            "new_tokens": sum(len(c) for c in batch.completion_ids),
        }  # fmt: skip

    def evaluate(self, examples: Sequence[Example], batch_size: int = 16) -> dict[str, float]:
        """Greedy, one chain per held-out prompt: mean reward, score, validity and the guards (this
        process's share as sums, like ``step_stats``)."""
        totals: dict[str, float] = {}
        for b in range(0, len(examples), batch_size):
            batch = self.rollout(examples[b : b + batch_size], greedy=True)
            self.score(batch)
            for key, v in self.step_stats(batch).items():
                totals[key] = totals.get(key, 0.0) + v
        return totals

    def train(self, *, resume: bool = False, stop_after: int | None = None) -> RefineResult:
        return _train(self, resume=resume, stop_after=stop_after)


# behaviour.summarize's reward-hacking guards, logged per step and per evaluation.
GUARDS = ("identical", "copies_context", "kept", "short", "nothing_new", "distinct", "top_opening")


def _per_sample(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    n, nv = max(sums["n"], 1), max(sums["n_valid"], 1)
    return {
        f"{prefix}reward": sums["reward"] / n,
        f"{prefix}score": sums["score"] / nv,  # mean alignment score of valid texts
        f"{prefix}valid": sums["n_valid"] / n,
        **{f"{prefix}{k}": sums[k] / nv for k in (*GUARDS, "coherence", "alignment") if k in sums},  # shares of valid texts
        f"{prefix}edits": sums["edits"] / nv,
        f"{prefix}new_tokens": sums["new_tokens"] / n,
    }


def _reduce(accelerator: Any, d: dict[str, float], op: str = "sum") -> dict[str, float]:
    if accelerator.num_processes == 1:
        return d
    keys = sorted(d)
    t = accelerator.reduce(torch.tensor([d[k] for k in keys], dtype=torch.float64, device=accelerator.device), op)
    return dict(zip(keys, t.tolist()))


def reward_curve(out: Path) -> Path | None:
    """``reward.png``: reward, KL-penalized reward and validity (left), KL (right) per step."""
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "reward" in r and "eval_reward" not in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in steps]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    try:
        a.plot(x, [r["reward"] for r in steps], label="reward (score + validity)")
        a.plot(x, [r["objective"] for r in steps], label="reward - beta KL")
        a.plot(x, [r["valid"] for r in steps], label="valid share", alpha=0.6)
        evals = [r for r in rows if "eval_reward" in r]
        if evals:
            a.plot([r["step"] for r in evals], [r["eval_reward"] for r in evals], "o--", label="held-out reward (greedy)")
        a.set_xlabel("step")
        a.legend(fontsize=7)
        a.set_title(out.name)
        b.plot(x, [r["kl"] for r in steps], color="tab:red")
        b.set_xlabel("step")
        b.set_ylabel("KL to the AEM model (per chain)")
        fig.tight_layout()
        save_png(fig, out / "reward.png")
    finally:
        plt.close(fig)
    return out / "reward.png"


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Sampling at step s depends only on (seed, s, rank): a resumed run samples what the
    # uninterrupted one would have.
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def _train(r: Refiner, *, resume: bool, stop_after: int | None) -> RefineResult:
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from secondthoughts.sft import load_trainable_state, trainable_state

    cfg, acc = r.config, r.accelerator
    out = Path(cfg.out)
    main, world, rank = acc.is_main_process, acc.num_processes, acc.process_index
    ckpt = runs.run_start(out, resume)  # the verified checkpoint, or None for a new run
    if resume:
        saved = json.loads((out / "config.json").read_text())["refine"]
        diff = {key: (v, getattr(cfg, key)) for key, v in saved.items() if key != "progress" and getattr(cfg, key) != v}
        if diff:
            raise ValueError(f"resume: settings differ from the run's config.json (saved, given): {diff}")
    acc.wait_for_everyone()  # every process has checked the folder before the main one writes to it

    if not cfg.data:
        raise ValueError("no prompts: pass --data examples.jsonl")
    train_ex = list(read_examples(cfg.data))
    if not train_ex:
        raise ValueError(f"{cfg.data} holds no examples")
    eval_ex = list(read_examples(cfg.eval_data))[: cfg.eval_max] if cfg.eval_data else []
    per_step = cfg.prompts_per_step * world
    steps_per_epoch = max(1, math.ceil(len(train_ex) / per_step))

    state = RefineState()
    if ckpt is not None:
        ck = runs.read_checkpoint(ckpt)
        if ck["world_size"] != world:
            raise ValueError(f"checkpoint was written by {ck['world_size']} processes, this run has {world}")
        load_trainable_state(r.policy, load_file(ckpt / "trainable.safetensors"))
        r.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        r.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        runs.set_rng_state(torch.load(ckpt / f"rng-{rank}.pt", weights_only=True))
        state = RefineState(**ck["state"])
        if main:
            runs.truncate_metrics(out / "metrics.jsonl", state.step)
            print(f"resumed {out} at step {state.step}/{cfg.steps}", flush=True)
    else:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            info = {
                "train": r.aem_info or {"mode": "coe"},
                "refine": asdict(cfg),
                "policy": {"source": cfg.policy, "aem_lora_base": r.aem.base if r.aem else None, "reference": "frozen copy" if r.reference is not None else "adapter disabled"},
                "data": {"train_examples": len(train_ex), "eval_examples": len(eval_ex)},
                "plan": {"world_size": world, "prompts_per_step": per_step, "samples_per_step": per_step * cfg.k, "steps_per_epoch": steps_per_epoch},
                "model": dict(zip(("trainable_parameters", "parameters"), models.count_parameters(r.policy))),
                "env": runs.environment(),
            }  # fmt: skip
            runs.write_atomic(out / "config.json", json.dumps(info, indent=2))
            runs.write_atomic(out / "metrics.jsonl", "")
    acc.wait_for_everyone()
    history: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        history.append(row)
        if main:
            runs.append_jsonl(out / "metrics.jsonl", row)

    def run_eval() -> None:
        if not eval_ex:
            return
        mine = eval_ex[rank::world]
        sums = _reduce(acc, r.evaluate(mine) if mine else dict.fromkeys(("n", "n_valid", "reward", "score", *GUARDS, "edits", "new_tokens"), 0.0))
        log({"step": state.step, **_per_sample(sums, "eval_"), "peak_memory_mb": runs.peak_memory_mb()})

    def save_checkpoint() -> None:
        ck = runs.CheckpointWriter(out)
        if main:
            ck.begin()
        acc.wait_for_everyone()
        ck.add_torch(f"rng-{rank}.pt", runs.rng_state())
        acc.wait_for_everyone()
        if main:
            ck.add_tensors("trainable.safetensors", trainable_state(r.policy))
            ck.add_torch("optimizer.pt", r.optimizer.state_dict())
            ck.add_torch("scheduler.pt", r.scheduler.state_dict())
            ck.commit({"state": asdict(state), "world_size": world})
            reward_curve(out)
        acc.wait_for_everyone()

    if state.step == 0:
        run_eval()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not (main and cfg.progress), desc="refine", dynamic_ncols=True)
    while state.step < cfg.steps:
        epoch, index = divmod(state.step, steps_per_epoch)
        order = list(range(len(train_ex)))
        random.Random(cfg.seed * 100_003 + epoch).shuffle(order)
        chosen = [train_ex[order[(index * per_step + j) % len(order)]] for j in range(per_step)]
        mine = chosen[rank * cfg.prompts_per_step : (rank + 1) * cfg.prompts_per_step]
        t0 = time.perf_counter()
        batch = r.rollout(mine, seed=_step_seed(cfg.seed, state.step, rank))
        t1 = time.perf_counter()
        r.score(batch)
        t2 = time.perf_counter()
        upd = r.update(batch)
        t3 = time.perf_counter()
        sums = _reduce(acc, r.step_stats(batch))
        upd = {key: v / world for key, v in _reduce(acc, upd).items()}
        errors = [e for e in batch.errors if e][:3]
        dt = t3 - t0
        state.step += 1
        state.samples += int(sums["n"])
        state.elapsed_s += dt
        row = {
            "step": state.step, **_per_sample(sums), **upd, "lr": r.scheduler.get_last_lr()[0],
            "samples_per_s": sums["n"] / dt, "rollout_s": t1 - t0, "score_s": t2 - t1, "update_s": t3 - t2,
            "elapsed_s": round(state.elapsed_s, 3), "peak_memory_mb": runs.peak_memory_mb(),
        }  # fmt: skip
        if errors:
            row["invalid_examples"] = errors  # this process's first few, so a failure mode is readable
        log(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}", valid=f"{row['valid']:.2f}", ident=f"{row['identical']:.2f}")
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
            run_eval()
        if state.step == cfg.steps:
            run_eval()
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint()
        if stop_after is not None and state.step >= stop_after:
            break
    bar.close()
    if state.step >= cfg.steps and main:
        how: list[str] = []
        runs.write_dir(out / "model", lambda p: how.append(save_policy(r.policy, r.tokenizer, p, r.aem, cfg.policy)))
        reward_curve(out)
        print(f"{out / 'model'}: {how[0]}", flush=True)
    acc.wait_for_everyone()
    return RefineResult(out, state, history, main)


def refine(config: RefineConfig, reward_fn: RewardFn | None = None, *, resume: bool = False, stop_after: int | None = None) -> RefineResult:
    """Run refinement as configured; see the module docstring for the run folder. ``stop_after``
    ends the run after that many steps as if killed (for tests of resume)."""
    return Refiner(config, reward_fn).train(resume=resume, stop_after=stop_after)
