"""How a chain-of-edits run is decoded: the one place that the re-aligner (``realign.Realigner``)
and the RL rollouts (``refine.Refiner.rollout``) take their prompts, budgets and batches from, so
that both decode exactly as training encoded.

- **what a run writes**: :func:`run_info` (its training settings) and :func:`chain_format` (runs
  saved before chains were anchored have no ``chain_format`` field: theirs is positional);
- **the prompt**: ``context <|src|> source <|sep|>`` (``sequences.encode_prompt``) with the context
  cut from the left as training cut it (:func:`context_limit`), optionally followed by forced
  edits (tokenized as training tokenized whole chains);
- **the budget**: enough new tokens for a chain that rewrites every source token
  (:func:`new_token_budget`);
- **the batch**: prompts left-padded so that every row's next token is in the same column
  (:func:`left_padded`), and the stop tokens of a mode (:func:`stop_ids`);
- **generation**: ``model.generate`` under ``inference_mode`` with those, returning the new tokens,
  a prompt's samples sharing its prefill (:func:`generate`); a greedy row beside a prompt's
  samples (:class:`GreedyRows`).

Torch-free but for :func:`left_padded`, :func:`generate`, :func:`repeated_prompt_cache` and
:class:`GreedyRows`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from secondthoughts.sequences import encode_prompt
from secondthoughts.settings import flags_given, setting

# The chain format of runs that do not say (every run since the field exists says).
DEFAULT_CHAIN_FORMAT = "anchored"
LEGACY_CHAIN_FORMAT = "positional"  # runs saved before chains were anchored
# The repeat guard's n-gram size by default (``repeats.RepeatGuard``): read blind, n = 4 fixed the
# outputs it changed (+1.7 coherence on 5 of 300 dev stories), n = 3 changed more and gained
# nothing (docs/coherence.md).
NO_REPEAT = 4
# The commands' default decoding (realign, evaluate, serve): the greedy chain and 16 chains sampled at
# 0.7, the text the shipped rewrite model finds likeliest kept. Read blind in three rounds by new
# raters it beat greedy on coherence (+0.70, +0.52, +0.51, each interval above zero), alignment no
# worse; 32 candidates read no better (docs/coherence.md). It costs 6-10x greedy's time on a CPU. The Python API
# (``Realigner.realign``) stays greedy unless asked (``best_of``, ``rerank``).
BEST_OF, BEST_OF_TEMPERATURE, BEST_OF_RERANK = 16, 0.7, ("likelihood",)
# The best-of score also subtracts 1 x the share of its source a candidate keeps and 0.5 x log(words).
# Every candidate of 290 new stories read blind (rounds 13-17): the likelihood alone keeps the
# source's act or a long drifting text too often; with these weights (set before rounds 14-17
# read their 200 stories) alignment rose +0.33 [+0.15, +0.52] on those stories, coherence +0.08
# [-0.09, +0.25] (docs/coherence.md). On rounds 18-19 they read level with the likelihood alone, for
# the previous model and for the one shipped now (which learned to leave the source's act): kept.
SOURCE_PENALTY, LENGTH_PENALTY = 1.0, 0.5
# Rating heads trained on readers' ratings of this model's candidates (rating_heads.py) add to the
# best-of score: score + 0.25 x align + 0.5 x coherence, each head standardised over the text's valid
# changed candidates (rating_heads.heads_added). Seen on rounds 28-29 and read blind on 812 new
# stories (rounds 30-34; adopted by a rule on rounds 32-33 pooled, written before round 33 was
# decoded) against the previous default, the earlier heads choosing among the score's 5 best
# ("top", k = 5 chosen on rounds 21-23): Coherence +0.18 [+0.11, +0.24], Align -0.06 [-0.14,
# +0.03], with coherence weighted 1 (docs/coherence.md). Weighted 0.5 instead (seen on rounds
# 28-34, then a rule written before round 35 was decoded): Align +0.20 [+0.10, +0.32], Coherence
# -0.02 [-0.11, +0.06] against 1 on round 35. Alone, without the score, the heads trade coherence
# for alignment.
HEADS, HEADS_CHOICE, HEADS_ADD, HEADS_TOP = "shipped", "add", [0.25, 0.5], 5
HEADS_CHOICES = ("add", "top")  # --heads-choice: coherence.check_heads_choice and the flag's choices
# DecodeSettings' settings of the best-of choice (coherence.load_reranker's keyword arguments).
RERANK_SETTINGS = ("coherence_weight", "source_penalty", "length_penalty", "heads", "heads_choice", "heads_add", "heads_top")


@dataclass
class DecodeSettings:
    """How a text is decoded: ``Realigner.realign_many``'s settings, and the flags of ``realign``,
    ``evaluate`` and ``serve`` (``settings.add_flags``; each command takes the fields it needs)."""

    mode: str | None = setting(None, "apply: the chain only, applied (default for chain-of-edits runs); generate: chain then target "
                                     "(the paper's decoding); direct: runs trained with --mode direct; default: the run's own",
                               choices=("apply", "generate", "direct"), type=str)
    constrained: bool = setting(True, "let the model write chains that may not parse or apply", flag="--unconstrained")
    num_beams: int = setting(1, "beam search width (1: greedy or sampling)", flag="--beams", metavar="N")
    do_sample: bool = setting(False, "sample instead of searching", flag="--sample")
    temperature: float = setting(BEST_OF_TEMPERATURE, "sampling temperature (of --sample and --best-of)")
    top_p: float = setting(1.0, "nucleus sampling threshold (1: off)")
    max_new_tokens: int | None = setting(None, "generation budget (default: enough to rewrite every source token)", type=int)
    seed: int | None = setting(None, "seed for sampling", type=int)
    prompt_lookup_num_tokens: int | None = setting(None, "draft N tokens at a time by copying from the prompt (batch size 1)",
                                                   flag="--prompt-lookup", type=int, metavar="N")
    draft: str = setting("auto", "chain: draft spans and positions from the source, check them in one pass (greedy, one text at a "
                                 "time, same output); auto: chain for greedy apply mode at batch size 1", choices=("auto", "chain", "none"))
    no_repeat: int = setting(NO_REPEAT, "the text a constrained chain writes never repeats one of its own N-token sequences (0: off)",
                             metavar="N")
    best_of: int = setting(BEST_OF, "the greedy chain and N sampled ones per text (one batch): keep the one the --rerank "
                                    "scorers like best; 1: greedy alone, 6-10x faster on a CPU", metavar="N")
    rerank: list = setting(list(BEST_OF_RERANK), "scorers for --best-of: 'likelihood' (the rewrite model shipped in the package: "
                                                 "a text's mean token log-likelihood as the rewrite of its source), direct-mode run "
                                                 "folders (the same with that model), reward run folders (alignment or coherence, "
                                                 "as each run's config says) or module:function (alignment; write "
                                                 "coherence=module:function for a coherence callable)", metavar="SCORER")
    coherence_weight: float = setting(1.0, "best-of score: log P(aligned) + W * log P(coherent)", metavar="W")
    source_penalty: float = setting(SOURCE_PENALTY, "best-of score minus W x the share of its source a text keeps (0-1): "
                                                    "a candidate that keeps the unaligned act reads less aligned", metavar="W")
    length_penalty: float = setting(LENGTH_PENALTY, "best-of score minus W x log(words): long candidates drift", metavar="W")
    heads: str = setting(HEADS, "rating heads that weigh in on the best-of choice (--heads-choice): 'shipped' (the package's, "
                                "trained on readers' ratings of the default model's candidates), a folder of heads "
                                "(benchmarks/learned_heads.py train) or 'none'", metavar="DIR")
    heads_choice: str = setting(HEADS_CHOICE, "add: the heads' ratings added to the best-of score (--heads-add); top: of the "
                                              "--heads-top candidates the score ranks highest, the one the heads rate best",
                                choices=HEADS_CHOICES)
    heads_add: list = setting(HEADS_ADD, "--heads-choice add: the best-of score + A x align + C x coherence, each head "
                                         "standardised over the text's candidates", type=float, nargs=2, metavar=("A", "C"))
    heads_top: int = setting(HEADS_TOP, "--heads-choice top: how many of the best-scored candidates the heads choose among", metavar="K")

    @classmethod
    def from_args(cls, args: Any) -> DecodeSettings:
        """The settings a command's flags gave (fields it has no flag for keep their defaults)."""
        return cls(**flags_given(cls, args))

    def realign_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``realign`` / ``realign_many``, but ``best_of`` and ``rerank``:
        those need the scorers loaded (``commands.realign.best_of_settings``)."""
        d = asdict(self)
        for k in ("best_of", "rerank", *RERANK_SETTINGS):
            del d[k]
        return d


def run_info(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training settings of a ``secondthoughts train`` run (folder or its ``model/``)."""
    path = Path(run)
    for cand in (path / "config.json", path.parent / "config.json"):
        info = train_settings(cand)
        if info is not None:
            return info
    return None


def train_settings(config: Path) -> dict[str, Any] | None:
    """The ``train`` section of a run's config.json; None when the file is missing, unreadable or
    not a run's (a Hugging Face model's config.json has none)."""
    try:
        info = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return info["train"] if isinstance(info, dict) and isinstance(info.get("train"), dict) else None


def chain_format(info: dict[str, Any] | None) -> str:
    """The chain format a run's model writes, from its ``run_info``: runs trained before chains
    were anchored have no ``chain_format``, and theirs is positional; a model with no run
    settings at all writes the default."""
    return info.get("chain_format", LEGACY_CHAIN_FORMAT) if info else DEFAULT_CHAIN_FORMAT


def merge_gap(info: dict[str, Any] | None) -> int | None:
    """The merge gap a run's chains were trained with (``sequences.build_sequences``'s): None where
    it merged nothing (its config says -1) or predates merging."""
    gap = (info or {}).get("merge_gap")
    return gap if gap is not None and gap >= 0 else None


def context_limit(tokenizer: Any, source: str, max_length: int | None) -> int | None:
    """How many context tokens a prompt keeps (None: all). Training cut the context so that the
    whole sequence fit ``max_length``; decoding leaves room for a completion about twice the
    source (chain + target)."""
    if not max_length:
        return None
    bare = len(encode_prompt(tokenizer, "", source))
    return max(0, max_length - bare - (bare + 16))


def prompt_ids(tokenizer: Any, context: str, source: str, max_length: int | None = None, head: str = "") -> list[int]:
    """The prompt ``context <|src|> source <|sep|>``, its context cut as :func:`context_limit`
    says, followed by ``head`` (forced edits, rendered in the run's chain format) when given. The
    head is tokenized on its own, as training tokenized whole chains: the cut falls on a marker."""
    ids = encode_prompt(tokenizer, context, source, context_limit(tokenizer, source, max_length))
    if head:
        ids += tokenizer(head, add_special_tokens=False)["input_ids"]
    return ids


def new_token_budget(tokenizer: Any, sources: Sequence[str], mode: str = "apply") -> int:
    """Enough new tokens for a chain that rewrites every source token (about twice the longest
    source in model tokens, plus a few per edit), and in generate / direct mode a target too."""
    n = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sources)
    chain = 3 * n + 48
    return {"apply": chain, "generate": chain + 2 * n + 16, "direct": 2 * n + 32}[mode]


def stop_ids(tokenizer: Any, eoc: int | None, mode: str = "apply") -> list[int]:
    """The tokens that end generation: EOS, and ``<|eoc|>`` when only the chain is wanted."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return eos + ([eoc] if mode == "apply" and eoc is not None else [])


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of prompts left-padded to the longest: every row's next token
    is at the end, so generation continues all rows in one column."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(list(p))
        mask[r, width - len(p) :] = 1
    return ids, mask


def generate(
    model: Any, ids: Any, mask: Any, budget: int, stops: Sequence[int], pad_id: int, processors: Sequence[Any] = (), **search: Any
) -> list[list[int]]:
    """The new tokens of each row (``num_return_sequences`` rows per prompt, next to each other),
    up to ``budget`` of them, padded after a stop, under these logits ``processors`` in order. The
    model's train / eval mode is the caller's.

    Rows of one prompt share its prefill: the prompt runs through the model once and its cache is
    repeated (transformers' own ``num_return_sequences`` runs every copy of the prompt, which on a
    CPU cost as much as 40 decoding steps of the whole batch at best-of-8)."""
    import torch

    repeats = int(search.pop("num_return_sequences", 1) or 1)
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.inference_mode():
        cache = None
        if repeats > 1 and ids.shape[1] > 1 and search.get("num_beams", 1) == 1:
            # All but the last prompt token: generate runs the uncached rest and takes the logits from there.
            cache = repeated_prompt_cache(model, ids[:, :-1], mask[:, :-1], repeats)
            ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
        elif repeats > 1:
            search["num_return_sequences"] = repeats
        if cache is not None:
            search["past_key_values"] = cache
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=budget, eos_token_id=list(stops), pad_token_id=pad_id,
            logits_processor=list(processors) or None, use_cache=True, **search,
        )  # fmt: skip
    return out[:, ids.shape[1] :].tolist()


def repeated_prompt_cache(model: Any, ids: Any, mask: Any, repeats: int) -> Any:
    """A ``DynamicCache`` of the (left-padded) prompts ``ids`` run once through ``model``'s decoder
    (no vocabulary projection), each row repeated ``repeats`` times as ``repeat_interleave``
    repeats rows: the prefill that a prompt's samples, or the candidates scored after it, share.
    Positions count from each row's first real token, as ``generate`` counts them."""
    from transformers import DynamicCache

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's LoRA-wrapped LM
    cache = DynamicCache(config=lm.config)
    lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(repeats)
    return cache


class GreedyRows:
    """A logits processor for a sampled batch whose rows come in groups of ``every`` (one prompt's
    ``num_return_sequences``): the first row of each group takes its most likely token, so a greedy
    decode runs beside its prompt's samples in the same batch (best-of-N's greedy candidate). Put it
    after the constraint: only the greedy row's allowed maximum survives temperature and top-p."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        first = scores[:: self.every]
        scores = scores.clone()
        scores[:: self.every] = torch.full_like(first, -float("inf")).scatter_(1, first.argmax(-1, keepdim=True), 0.0)
        return scores
