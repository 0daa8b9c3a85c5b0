"""How likely a rewrite model finds a text as the rewrite of its source in its context: the mean
log-probability per token (its EOS included) under a direct-mode run (``secondthoughts train
--mode direct``, or ``scripts/trl_direct.py``), prompted exactly as that run was trained.

A coherence signal for reranking best-of-N candidates of one story: on the hand labels it picks
the more coherent of two outputs of the same story 87% of the time, and on new stories, read
blind, the best of the greedy chain and 8 or 16 sampled ones picked by it read more coherent than
greedy, alignment no worse (docs/coherence.md). It is no measure *across* systems: it rates a
model's generic, source-like outputs above the gold texts, so it is a reranker, not an
``evaluate`` metric.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from secondthoughts.decoding import prompt_ids, run_info
from secondthoughts.rl_loss import mean_token_logp
from secondthoughts.rollouts import CompletionLogProbs
from secondthoughts.sequences import encode_completion

SHIPPED = Path(__file__).parent / "examples" / "rewrite-run"  # ``--rerank likelihood``


def shipped_rewrite_run() -> Path:
    """The rewrite model shipped in the package (its model card: README.md there)."""
    if not is_rewrite_run(SHIPPED):
        raise ValueError(f"--rerank likelihood: no shipped rewrite model at {SHIPPED}; pass a direct-mode run folder")
    return SHIPPED


def is_rewrite_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run folder of a direct (plain rewrite) model."""
    info = run_info(path) if Path(path).is_dir() else None
    return bool(info) and info.get("mode") == "direct"


class RewriteLikelihood:
    """``scorer(contexts, texts, sources) -> mean token log-probability`` of each text (<= 0) as
    the rewrite of its source, under the direct-mode run ``run``. ``takes_sources`` tells
    ``best_of.choose_best`` to pass the sources."""

    takes_sources = True

    def __init__(self, run: str | os.PathLike[str], *, batch_size: int = 16, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        from secondthoughts.realign import Realigner

        if not is_rewrite_run(run):
            raise ValueError(f"{run}: not a direct-mode run (secondthoughts train --mode direct)")
        loaded = Realigner(run, device=device, dtype=dtype)
        self.run, self.batch_size = str(run), batch_size
        self.tokenizer, self.max_length = loaded.tokenizer, loaded.max_length
        self.logprobs = CompletionLogProbs(loaded.model).eval()

    def __call__(self, contexts: list[str], texts: list[str], sources: list[str]) -> list[float]:
        """Texts of one (context, source) share its prompt's forward pass (``CompletionLogProbs.one_prompt``)."""
        if not len(contexts) == len(texts) == len(sources):
            raise ValueError(f"{len(contexts)} contexts, {len(texts)} texts and {len(sources)} sources")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        groups: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(zip(contexts, sources)):
            groups.setdefault(key, []).append(i)
        out = [0.0] * len(texts)
        for (context, source), rows in groups.items():
            prompt = prompt_ids(tok, context, source, self.max_length)
            for a in range(0, len(rows), self.batch_size):
                part = rows[a : a + self.batch_size]
                completions = [encode_completion(tok, None, texts[i], source) for i in part]
                with torch.no_grad():
                    lp = self.logprobs.one_prompt(prompt, completions, pad).float()
                mask = (torch.arange(lp.shape[1]) < torch.tensor([len(c) for c in completions])[:, None]).to(lp.device)
                for i, v in zip(part, mean_token_logp(lp, mask.float()).tolist()):
                    out[i] = v
        return out
