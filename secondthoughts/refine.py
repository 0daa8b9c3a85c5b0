"""Refinement by reinforcement learning (Second Thoughts, stage 2): sample chains of edits from an
AEM model, apply them, score the re-aligned texts, and improve the policy against that reward
while staying close to the AEM model.

One step, per prompt (``context <|src|> source <|sep|>``, the AEM prompt):

1. **rollout**: ``k`` sampled chains (constrained decoding by default, so every chain applies;
   temperature / top-p / top-k / max_new_tokens exposed), each applied to the source.
2. **score**: ``reward(contexts, texts)`` of the re-aligned texts (any callable; default the
   value-alignment :class:`~secondthoughts.reward.RewardModel`) plus a validity term: a chain that
   does not parse, does not apply, deletes every word, or is cut by ``max_new_tokens`` scores ``-invalid_penalty``
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from secondthoughts import behaviour, decoding, models, settings
from secondthoughts.ail import NEGATIVES, AilRows, ail_rows, ail_terms, prompt_ail_rows
from secondthoughts.chain_text import EOC, render_chain
from secondthoughts.data import Example
from secondthoughts.edits import Edit
from secondthoughts.policy import load_policy
from secondthoughts.rl_loss import (
    clipped_policy_loss,
    greedy_advantages,
    rloo_advantages,
    sequence_kl,
)
from secondthoughts.rollouts import (
    CompletionLogProbs,
    Rollout,
    batch_rows,
    read_chain,
    row_slice,
    score_rollout,
)

RewardFn = Callable[[list[str], list[str]], list[float]]
BASELINES: tuple[str, ...] = ("rloo", "greedy")


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
    invalid_penalty: float = _f(1.0, "reward of a chain that does not parse, apply or finish, or deletes every word (given as -penalty)")
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


# ---------------------------------------------------------------- loading


def load_reward(spec: str, *, batch_size: int = 32, device: torch.device | str | None = None) -> RewardFn:
    """A reward run or ensemble folder (``reward.load``) or ``module:function`` naming a callable."""
    from secondthoughts.reward import load_scorer

    return load_scorer(spec, batch_size=batch_size, device=device)


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

        from secondthoughts.decoding import chain_format, merge_gap, run_info
        from secondthoughts.edit_vocab import EditVocab

        self.config = config
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and config.dtype == "auto"
        # cpu=True without CUDA: torchrun's LOCAL_RANK/WORLD_SIZE then mean DDP over gloo (see sft.train).
        self.accelerator = Accelerator(mixed_precision="bf16" if cuda_bf16 else "no", cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        self.aem_info = run_info(config.policy) or {}
        self.chain_format = chain_format(self.aem_info)  # as the policy writes chains
        self.merge_gap = merge_gap(self.aem_info)  # expert chains as the policy learned them
        if self.aem_info.get("mode", "coe") != "coe":
            raise ValueError(f"{config.policy} was trained with --mode {self.aem_info['mode']}: refinement needs a chain-of-edits run")
        self.policy, self.reference, self.tokenizer, self.aem = load_policy(
            config.policy, lora_r=config.lora_r, lora_alpha=config.lora_alpha, seed=config.seed, full=config.full,
            train_tokens=config.train_tokens, dtype=config.dtype,
        )
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
        cfg = self.config
        return score_rollout(batch, self.reward_fn, self.coherence_fn, cfg.coherence_weight, cfg.invalid_penalty)

    # ------------------------------------------------------------ update

    def _rows(self, prompts: list[list[int]], comps: list[list[int]], sources: list[str]) -> tuple[dict[str, Any], int]:
        """Model inputs for completions after prompts; under constrained decoding with the tokens
        the constraint allowed at each completion position (``"allow"``, index sets;
        ``sources``: each row's source), and how many completion tokens fell outside those sets."""
        rows: dict[str, Any] = {k: v.to(self.device) for k, v in batch_rows(prompts, comps, self.pad_id).items()}
        outside = 0
        if self.config.constrained:
            from secondthoughts.constraint_sets import completion_sets

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

    def ail_rows(self, batch: Rollout) -> AilRows:
        """The AIL rows of ``batch``'s prompts (:func:`~secondthoughts.ail.ail_rows`), chains as the policy learned them."""
        cfg = self.config
        return ail_rows(batch.examples, batch.prompt_ids, self.prompt_ids, self._chain_ids, cfg.costs, self.merge_gap, cfg.ail_negative)

    def _chain_ids(self, chain: list[Edit], source: str) -> list[int]:
        # Tokenized as sequences.encode_completion tokenizes training chains.
        return list(self.tokenizer(render_chain(chain, source, self.chain_format), add_special_tokens=False)["input_ids"])

    def _group_rows(self, batch: Rollout, g: int, ail: AilRows) -> tuple[dict[str, Any], int]:
        """Model inputs of prompt ``g``'s ``k`` samples followed by its AIL rows (the expert chain,
        then the reverse chain when used), and the tokens outside the constraint's sets."""
        k = batch.k
        mine = prompt_ail_rows(ail, g, len(batch.examples))
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

    def _greedy_totals(self, batch: Rollout) -> torch.Tensor | None:
        """The greedy baseline's KL-penalized rewards (the LaMer baseline), or None for RLOO."""
        if batch.greedy is None:
            return None
        g_rows, _ = self.sample_rows(batch.greedy)
        g_kl = sequence_kl(self.policy_logprobs(g_rows), self.reference_logprobs(g_rows), g_rows["completion_mask"])
        return batch.greedy.rewards.to(self.device) - self.config.beta * g_kl  # type: ignore[union-attr]

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
        ail = self.ail_rows(batch) if use_ail else ([], [], [])
        groups = [self._group_rows(batch, g, ail) for g in range(p)]
        outside = sum(o for _, o in groups)
        refs = [F.pad(self.reference_logprobs(row_slice(rows, 0, k)), (0, rows["completion_ids"].shape[1])) for rows, _ in groups]
        rewards = batch.rewards.to(self.device)
        g_total = self._greedy_totals(batch)
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
                            ail_loss, gap, expert_ll = ail_terms(logps, rows["completion_mask"], k, lowest[g], cfg.ail_negative, cfg.ail_margin)
                            loss = loss + cfg.ail_weight * ail_loss / p  # the hinge is averaged over prompts
                            if epoch == 0:
                                sums["ail_loss"] += ail_loss.item() / p
                                sums["ail_gap"] += gap.item() / p
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
        """The run: steps of rollout, score and update, with evaluations, logs and checkpoints
        (``refine_run``)."""
        from secondthoughts.refine_run import run

        return run(self, resume=resume, stop_after=stop_after)


# behaviour.summarize's reward-hacking guards, logged per step and per evaluation.
GUARDS = ("identical", "copies_context", "kept", "short", "nothing_new", "distinct", "top_opening")


def refine(config: RefineConfig, reward_fn: RewardFn | None = None, *, resume: bool = False, stop_after: int | None = None) -> RefineResult:
    """Run refinement as configured; see the module docstring for the run folder. ``stop_after``
    ends the run after that many steps as if killed (for tests of resume)."""
    return Refiner(config, reward_fn).train(resume=resume, stop_after=stop_after)
