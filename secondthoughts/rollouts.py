"""One refinement step's samples (``Rollout``) and what reads and scores them: chains read from
generated ids, prompt + completion rows, and the completion log-probabilities the update needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from secondthoughts.chain_text import EOC, parse_chain
from secondthoughts.completion_loss import token_logprobs
from secondthoughts.data import Example
from secondthoughts.decoding import repeated_prompt_cache
from secondthoughts.edits import Edit, EditError, realigned_text
from secondthoughts.rl_loss import total_rewards
from secondthoughts.sequences import split_completion


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


def score_rollout(
    batch: Rollout, reward_fn: Callable[[list[str], list[str]], Sequence[float]], coherence_fn: Callable[[list[str], list[str]], Sequence[float]] | None,
    coherence_weight: float, invalid_penalty: float,
) -> torch.Tensor:  # fmt: skip
    """Score each valid text of ``batch`` (and of its greedy decode) with ``reward_fn`` (with a
    ``coherence_fn``: ``coherence.combined_reward`` of the two); invalid chains get
    ``-invalid_penalty``. Sets ``scores`` and ``rewards`` (and ``alignment`` / ``coherence``);
    returns ``batch.rewards``."""
    from secondthoughts.coherence import combined_reward

    parts = [batch] + ([batch.greedy] if batch.greedy is not None else [])
    todo = [(b, i) for b in parts for i in range(len(b)) if b.valid[i]]
    contexts, texts = [b.contexts[i] for b, i in todo], [b.texts[i] for b, i in todo]
    got = reward_fn(contexts, texts) if todo else []
    if len(got) != len(todo):
        raise ValueError(f"the reward function returned {len(got)} scores for {len(todo)} texts")
    coh = coherence_fn(contexts, texts) if todo and coherence_fn is not None else None
    if coh is not None:
        if len(coh) != len(todo):
            raise ValueError(f"the coherence function returned {len(coh)} scores for {len(todo)} texts")
        got_a, got_c = iter(float(x) for x in got), iter(float(x) for x in coh)
        for b in parts:
            b.alignment = torch.tensor([next(got_a) if v else 0.0 for v in b.valid], dtype=torch.float32)
            b.coherence = torch.tensor([next(got_c) if v else 0.0 for v in b.valid], dtype=torch.float32)
        got = combined_reward([float(x) for x in got], [float(x) for x in coh], coherence_weight)
    values = iter(float(x) for x in got)
    for b in parts:
        b.scores = torch.tensor([next(values) if v else 0.0 for v in b.valid], dtype=torch.float32)
        b.rewards = total_rewards(b.scores, torch.tensor(b.valid), invalid_penalty)
    return batch.rewards  # type: ignore[return-value]


def read_chain(vocab: Any, source: str, ids: Sequence[int], finished: bool, chain_format: str) -> tuple[list[Edit], str, str | None]:
    """(chain, text, error) of generated chain ids in ``chain_format``: the text is the chain
    applied to the source, or the source itself with the reason when the chain does not parse,
    apply or finish, or deletes every word."""
    if not finished:
        return [], source, f"no {EOC} within {len(ids)} new tokens"
    chain_text, _ = split_completion(vocab.decode(ids))
    try:
        chain = parse_chain(chain_text, source, chain_format)
        return chain, realigned_text(source, chain), None
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

    Runs the vocabulary projection only on completion positions (as ``completion_loss.CompletionLoss``),
    a chunk of positions at a time (``completion_loss.token_logprobs``); a module, so that DDP wraps it.
    ``allow``: the tokens the constraint allowed at each completion position, as
    ``constraint_sets.CompletionSets`` (built into a mask one chunk at a time) or a dense (completion
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


    def one_prompt(self, prompt: Sequence[int], completions: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
        """:meth:`forward`'s result, (N, T), for N completions of one prompt (no constraint): the
        prompt runs through the model once and its cache is repeated for the N rows, as a
        best-of-N reranker's candidates of one text share their prompt (``likelihood``)."""
        if len(prompt) < 2 or not completions:
            raise ValueError("one_prompt needs a prompt of two or more tokens and at least one completion")
        lm = self.causal_lm()
        decoder, device = lm.get_decoder(), next(lm.parameters()).device
        n, wp, wc = len(completions), len(prompt), max(1, max(map(len, completions)))
        head = torch.tensor([list(prompt[:-1])], device=device)
        cache = repeated_prompt_cache(lm, head, torch.ones_like(head), n)
        # The prompt's last token starts every row: its output predicts the completion's first.
        tail = torch.full((n, 1 + wc), pad_id, dtype=torch.long)
        tail[:, 0] = prompt[-1]
        cmask = torch.zeros((n, wc), dtype=torch.bool)
        for i, c in enumerate(completions):
            tail[i, 1 : 1 + len(c)] = torch.tensor(list(c), dtype=torch.long)
            cmask[i, : len(c)] = True
        attn = torch.cat([torch.ones((n, wp), dtype=torch.long), cmask.long()], 1).to(device)
        position_ids = torch.arange(wp - 1, wp + wc, device=device).expand(n, -1)
        tail = tail.to(device)
        hidden = decoder(input_ids=tail, attention_mask=attn, position_ids=position_ids, past_key_values=cache, use_cache=True).last_hidden_state
        keep = cmask.to(device)
        lp = token_logprobs(lm.get_output_embeddings(), hidden[:, :-1][keep], tail[:, 1:][keep], temperature=self.temperature)
        return torch.zeros((n, wc), dtype=lp.dtype, device=lp.device).masked_scatter(keep, lp)


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
