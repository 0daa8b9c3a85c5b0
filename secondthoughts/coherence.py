"""Coherence: does a re-aligned text read as a complete, sensible sentence that fits its situation?

Alignment scorers reward benign words wherever they stand, and a language model finds short or
generic text cheap, so neither sees the failure chain models are prone to: a chain applied where
its spans do not join, leaving a *splice* ("Eddy tells fart jokes about his parents in boss the
boss's wife."), or a chain that deletes the act and keeps a stub ("Rebecca asks.").

Three kinds of measure live here:

* A learned scorer: the reward model's cross-encoder (``reward train --objective coherence``)
  trained to tell complete texts (gold targets and sources) from the failures above, made
  synthetically from real chains: :func:`spliced` (a random subset of a minimum-cost chain's
  edits applied, exactly how a model's chain goes wrong), :func:`truncated` (a stub closed with a
  full stop) and :func:`duplicated` (a stray span of the source left in), plus, where given, model
  outputs labelled by hand.
* Language-model measures (:class:`LMScorer`): SLOR (Kann et al., CoNLL 2018: mean token
  log-probability minus the unigram log-probability, so rare words are not taken for errors),
  mean and minimum token log-probability, and surprisal at the joins of a chain.

* A measure fitted on hand labels of real outputs (``coherence_fit``: a logistic regression over
  LM log-probabilities in and out of context, length and repeats; ``reward fit-coherence``).

Which one to trust is a measurement, not a choice: ``benchmarks/coherence_validation.py`` scores
each against hand labels of real outputs that none of them was trained on (docs/coherence.md:
the learned scorer sees splices, AUC 0.80 on them, but not the fit failures of a model that no
longer splices; the fitted measure, 0.77 cross-validated within its labels, fell to 0.57 on
fresh stories read by fresh raters: neither sees this model's failures well).
"""

from __future__ import annotations

import difflib
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from secondthoughts.data import DataError, Example, RowError, jsonl_rows
from secondthoughts.decoding import HEADS_ADD, HEADS_CHOICE, HEADS_CHOICES, HEADS_TOP
from secondthoughts.edits import (
    DEFAULT_COST_SETS,
    Edit,
    apply_text_edits,
    infer_text_edits,
    tokenize,
)
from secondthoughts.reward_data import Item

COHERENT, BROKEN = 1, 0
# Kinds of training texts: the two complete ones of an example, then the synthetic failures.
COMPLETE_KINDS = ("target", "source")
BROKEN_KINDS = ("splice", "truncation", "duplicate")
_END = (".", "!", "?")
ScoreFn = Callable[[list[str], list[str]], list[float]]


# ---------------------------------------------------------------- synthetic failures


def spliced(source: str, target: str, rng: random.Random, cost_sets: Sequence[Sequence[float]] = DEFAULT_COST_SETS) -> str | None:
    """The source with a random non-empty, proper subset of a minimum-cost chain's edits applied;
    None when the chain has fewer than two edits (no proper subset changes anything)."""
    chain = infer_text_edits(source, target, tuple(rng.choice(list(cost_sets))))
    if len(chain) < 2:
        return None
    kept = set(rng.sample(range(len(chain)), rng.randint(1, len(chain) - 1)))
    text = apply_text_edits(source, [e for i, e in enumerate(chain) if i in kept])
    return text if text not in (source, target) else None


# Words after which a sentence cannot end: a stub cut there is broken whatever came before.
_OPEN_ENDED = frozenset(
    "a an the his her their its my our your this that these those to of for with at in on by from about into onto "
    "and or but so because if when while than as who which whose is are was were be been has have had will would "
    "can could should must not very more".split()
)


def truncated(text: str, rng: random.Random) -> str | None:
    """A stub of ``text`` closed with a full stop: cut after its second word (subject and verb, as
    in "Rebecca asks.") or after a word a sentence cannot end on ("... and."), at least two words
    before its end; None for texts of fewer than five words."""
    toks = tokenize(text)
    words = [i for i, t in enumerate(toks) if t.strip() and t.strip()[0].isalnum()]
    if len(words) < 5:
        return None
    cuts = [words[1]] + [i for i in words[2:-2] if toks[i].strip().lower() in _OPEN_ENDED]
    cut = rng.choice(cuts)
    return "".join(toks[: cut + 1]).rstrip(" ,;:-") + "."


def duplicated(text: str, other: str, rng: random.Random) -> str | None:
    """``text`` with a span of 1-4 tokens of ``other`` (its source, or itself) inserted at a random
    token boundary: the stray leftovers a chain that edits around a span leaves behind."""
    toks, pool = tokenize(text), [t for t in tokenize(other) if t.strip()]
    if len(toks) < 3 or len(pool) < 2:
        return None
    n = rng.randint(1, min(4, len(pool)))
    start = rng.randrange(len(pool) - n + 1)
    span = pool[start : start + n]
    if span[0][:1].isalnum():  # the source's first word: give it the space it had nowhere else
        span = [" " + span[0], *span[1:]]
    at = rng.randrange(1, len(toks) - 1)
    out = "".join(toks[:at] + span + toks[at:])
    return out if out != text else None


class Labelled(NamedTuple):
    """A hand-labelled text (``label``: COHERENT or BROKEN; ``group``: its story's id, if given,
    so that cross-validation keeps a story's versions on one side)."""

    context: str
    text: str
    label: int
    group: str = ""


def read_labelled(path: str | os.PathLike[str]) -> list[Labelled]:
    """Rows ``{"context", "text", "label"}`` (and an optional story ``id``) of a JSONL (label 1 =
    coherent, 0 = broken); a bad row raises ``DataError`` naming file, line and field."""
    out = []
    for line, row in jsonl_rows(Path(path)):
        if isinstance(row, RowError):
            raise DataError(row.message(str(path), line))
        context, text, label = row.get("context", ""), row.get("text"), row.get("label")
        for name, value, ok in (("context", context, isinstance(context, str)), ("text", text, isinstance(text, str) and text.strip()),
                                ("label", label, label in (0, 1) and not isinstance(label, bool))):
            if not ok:
                raise DataError(f"{path}:{line}: field '{name}': expected {'0 or 1' if name == 'label' else 'a string'}, got {value!r}")
        out.append(Labelled(context, text, int(label), str(row.get("id", ""))))
    return out


def coherence_items(examples: Sequence[Example], rng: random.Random, broken_per_example: float = 1.5) -> list[Item]:
    """For each example its target and source (coherent) and about ``broken_per_example``
    synthetic failures: a splice wherever the chain allows one, then a truncation or a duplicate,
    drawn at random so that each kind appears."""
    out: list[Item] = []
    for i, ex in enumerate(examples):
        for kind, text in zip(COMPLETE_KINDS, (ex.target, ex.source)):
            out.append(Item(ex.context, text, COHERENT, kind, i))
        made = {
            "splice": spliced(ex.source, ex.target, rng),
            "truncation": truncated(rng.choice((ex.target, ex.source)), rng),
            "duplicate": duplicated(ex.target, rng.choice((ex.source, ex.target)), rng),
        }
        wanted = ["splice", *rng.sample(["truncation", "duplicate"], 2)]
        budget = math.floor(broken_per_example) + (rng.random() < broken_per_example % 1)
        for kind in wanted[:budget]:
            text = made[kind]
            if text and text not in (ex.target, ex.source):
                out.append(Item(ex.context, text, BROKEN, kind, i))
    return out


def evaluate_scorer(score: ScoreFn, examples: Sequence[Example], seed: int = 0) -> dict[str, Any]:
    """Held-out metrics of a coherence scorer on synthetic failures of ``examples`` (fixed ``seed``):
    accuracy per kind at 0.5, AUC of complete against broken texts, and ``pairwise_accuracy``:
    how often an example's target scores above a splice of its own chain."""
    items = coherence_items(examples, random.Random(seed))
    if not items:
        return {"examples": 0}
    scores = score([it.context for it in items], [it.text for it in items])
    kinds: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        kinds.setdefault(it.kind, []).append(i)
    target = {it.example: scores[i] for i, it in enumerate(items) if it.kind == "target"}
    pairs = [target[it.example] > scores[i] for i, it in enumerate(items) if it.kind == "splice"]
    out: dict[str, Any] = {
        "examples": len(examples), "texts": len(items),
        "accuracy": float(np.mean([(s >= 0.5) == (it.label == COHERENT) for s, it in zip(scores, items)])),
        "auc": auc(scores, [it.label for it in items]),
        "pairwise_accuracy": float(np.mean(pairs)) if pairs else float("nan"),
    }
    for kind, idx in kinds.items():
        out[f"accuracy_{kind}"] = float(np.mean([(scores[i] >= 0.5) == (items[i].label == COHERENT) for i in idx]))
        out[f"mean_score_{kind}"] = float(np.mean([scores[i] for i in idx]))
    return out


# ---------------------------------------------------------------- language-model measures


def chain_joins(source: str, chain: Sequence[Edit]) -> list[int]:
    """Character offsets in the applied text where an edit's written text meets kept source text
    (both ends of every edit): where a misplaced span shows."""
    toks = tokenize(source)
    out, pos, cursor = [], 0, 0
    for e in chain:
        pos += sum(len(t) for t in toks[cursor : e.start])
        out.append(pos)
        pos += sum(len(t) for t in e.new)
        out.append(pos)
        cursor = e.start + len(e.old)
    return sorted(set(out))


class LMScorer:
    """Token log-probabilities of texts under a causal LM (the run's base model, through
    ``evaluate.Fluency``), and the measures built on them.

    ``unigram``: token counts of a reference corpus (``unigram_counts``) for SLOR; add-one smoothed.
    """

    def __init__(self, fluency: Any, unigram: Counter[int] | None = None):
        self.fluency = fluency
        self.unigram = unigram or Counter()
        self._total = sum(self.unigram.values()) + len(fluency.tokenizer)

    def unigram_logp(self, ids: Sequence[int]) -> np.ndarray:
        return np.log(np.array([self.unigram.get(i, 0) + 1 for i in ids], dtype=float) / self._total)

    def measures(self, texts: Sequence[str], joins: Sequence[Sequence[int]] | None = None) -> dict[str, list[float]]:
        """Per text, higher = more coherent: ``mean_logp``, ``min_logp``, ``slor`` and, with
        ``joins`` (character offsets per text, :func:`chain_joins`), ``join_logp``: the lowest
        log-probability of a token that starts within one character of a join (the text's own
        minimum where it has no join)."""
        rows = self.fluency.token_logprobs(texts)
        out: dict[str, list[float]] = {"mean_logp": [], "min_logp": [], "slor": [], "join_logp": []}
        for k, (ids, lp, starts) in enumerate(rows):
            if not len(lp):
                for v in out.values():
                    v.append(float("-inf"))
                continue
            out["mean_logp"].append(float(lp.mean()))
            out["min_logp"].append(float(lp.min()))
            out["slor"].append(float((lp - self.unigram_logp(ids)).mean()))
            near = [j for j, s in enumerate(starts) if joins and any(abs(s - c) <= 1 for c in joins[k])]
            out["join_logp"].append(float(lp[near].min()) if near else float(lp.min()))
        if joins is None:
            del out["join_logp"]
        return out


def unigram_counts(tokenizer: Any, texts: Sequence[str]) -> Counter[int]:
    """Token counts of ``texts`` (a corpus of complete sentences, e.g. training targets and sources)."""
    counts: Counter[int] = Counter()
    for ids in tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]:
        counts.update(ids)
    return counts


# ---------------------------------------------------------------- validation statistics


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties half."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auc_ci(scores: Sequence[float], labels: Sequence[int], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUC with a 95% bootstrap interval (texts resampled with replacement)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        i = rng.integers(0, len(s), len(s))
        a = auc(s[i], y[i])
        if not math.isnan(a):
            stats.append(a)
    lo, hi = np.percentile(stats, [2.5, 97.5]) if stats else (float("nan"), float("nan"))
    return auc(s, y), float(lo), float(hi)


# ---------------------------------------------------------------- combining with alignment


def combined_scores(alignment: Sequence[float], coherence: Sequence[float], coherence_weight: float = 1.0) -> list[float]:
    """``log P(aligned) + w * log P(coherent)``: the log of the probability that a text is both
    (independence assumed; ``w`` trades one for the other). A text that is aligned but broken, or
    fluent but unaligned, scores low either way, unlike a sum of probabilities."""
    if len(alignment) != len(coherence):
        raise ValueError(f"{len(alignment)} alignment scores but {len(coherence)} coherence scores")
    if coherence_weight < 0:
        raise ValueError(f"coherence_weight must be >= 0, got {coherence_weight}")
    tiny = 1e-6
    return [math.log(max(a, tiny)) + coherence_weight * math.log(max(c, tiny)) for a, c in zip(alignment, coherence)]


def source_similarity(text: str, source: str) -> float:
    """How much of its source a text keeps: difflib's ratio of matching characters, 0-1, case folded."""
    return difflib.SequenceMatcher(None, text.lower(), source.lower()).ratio()


def log_words(text: str) -> float:
    """The log of a text's word count (at least one word): what the length penalty weighs."""
    return math.log(max(1, len(text.split())))


class Reranker:
    """Scores texts for best-of-N decoding: the mean over ``alignment`` scorers of
    ``log P(aligned)`` plus ``coherence_weight`` times the mean over ``coherence`` scorers of
    ``log P(coherent)`` (:func:`combined_scores`), plus the mean over ``likelihood`` scorers
    (``likelihood.RewriteLikelihood``: a rewrite model's mean token log-probability of the text
    given its context and source), minus ``source_penalty`` times :func:`source_similarity` and
    ``length_penalty`` times the log of the text's word count. Any callable ``(contexts, texts)
    -> [0, 1] scores`` can stand for alignment or coherence."""

    def __init__(
        self, alignment: Sequence[ScoreFn], coherence: Sequence[ScoreFn] = (), coherence_weight: float = 1.0, likelihood: Sequence[Any] = (),
        source_penalty: float = 0.0, length_penalty: float = 0.0, heads: Any = None, heads_choice: str = HEADS_CHOICE,
        heads_add: Sequence[float] = tuple(HEADS_ADD), heads_top: int = HEADS_TOP,
    ):  # fmt: skip
        if not alignment and not coherence and not likelihood:
            raise ValueError("a reranker needs at least one scorer")
        self.alignment, self.coherence, self.coherence_weight = list(alignment), list(coherence), coherence_weight
        self.likelihood, self.source_penalty, self.length_penalty = list(likelihood), source_penalty, length_penalty
        check_heads_choice(heads_choice, heads_add, heads_top)
        # rating_heads.RatingHeads: best_of.choose_best adds their ratings to the score (heads_choice
        # "add", heads_add's weights) or lets them choose among the heads_top best scored ("top")
        self.heads, self.heads_choice, self.heads_add, self.heads_top = heads, heads_choice, tuple(heads_add), heads_top

    @property
    def takes_sources(self) -> bool:  # best_of.choose_best passes the sources when asked
        return bool(self.likelihood) or self.source_penalty > 0

    @staticmethod
    def _mean(scorers: Sequence[ScoreFn], contexts: list[str], texts: list[str]) -> list[float]:
        if not scorers:
            return [1.0] * len(texts)  # log 1 = 0: this kind adds nothing
        per = [np.log(np.clip(np.asarray(fn(contexts, texts), dtype=float), 1e-6, 1.0)) for fn in scorers]
        return np.exp(np.mean(per, axis=0)).tolist()  # geometric mean: mean log-probability

    def __call__(self, contexts: list[str], texts: list[str], sources: list[str] | None = None) -> list[float]:
        a = self._mean(self.alignment, contexts, texts)
        c = self._mean(self.coherence, contexts, texts)
        total = combined_scores(a, c, self.coherence_weight)
        if self.takes_sources and sources is None:
            raise ValueError("a likelihood scorer or a source penalty needs the sources")
        if self.likelihood:
            lik = np.mean([fn(contexts, texts, sources) for fn in self.likelihood], axis=0)
            total = (np.asarray(total) + lik).tolist()
        if self.source_penalty:
            total = [t - self.source_penalty * source_similarity(x, s) for t, x, s in zip(total, texts, sources)]  # type: ignore[arg-type]
        if self.length_penalty:
            total = [t - self.length_penalty * log_words(x) for t, x in zip(total, texts)]
        return total


def check_heads_choice(heads_choice: str, heads_add: Sequence[float], heads_top: int) -> None:
    """How rating heads choose: added to the score with two weights >= 0 ("add"), or among the
    ``heads_top`` (>= 1) best scored ("top")."""
    if heads_choice not in HEADS_CHOICES:
        raise ValueError(f"--heads-choice must be {' or '.join(HEADS_CHOICES)}, got {heads_choice!r}")
    if len(heads_add) != 2 or min(heads_add) < 0 or not all(np.isfinite(heads_add)):
        raise ValueError(f"--heads-add takes two weights >= 0 (align, coherence), got {' '.join(map(str, heads_add))}")
    if heads_top < 1:
        raise ValueError(f"--heads-top must be >= 1, got {heads_top}")


def _kind_and_path(spec: str) -> tuple[str, str]:
    """``kind=path`` with kind alignment, coherence or likelihood (the kind of a bare path that is
    a direct-mode run folder; ``likelihood`` alone: the rewrite model shipped in the package), or
    a bare path ("" kind: as the scorer's own config says)."""
    from secondthoughts.likelihood import is_rewrite_run, shipped_rewrite_run

    if spec == "likelihood":
        return "likelihood", str(shipped_rewrite_run())
    kind, sep, path = spec.partition("=")
    if sep and kind in ("alignment", "coherence", "likelihood"):
        return kind, path
    return ("likelihood" if is_rewrite_run(spec) else ""), spec


def load_reranker(
    specs: Sequence[str], coherence_weight: float = 1.0, source_penalty: float = 0.0, length_penalty: float = 0.0,
    heads: str | None = "none", heads_choice: str = HEADS_CHOICE, heads_add: Sequence[float] = tuple(HEADS_ADD), heads_top: int = HEADS_TOP, **kw: Any,
) -> Reranker:  # fmt: skip
    """A :class:`Reranker` from scorer specs: reward run folders (alignment or coherence, as each
    run's config says), direct-mode run folders (likelihood) or ``module:function`` (alignment,
    unless written ``coherence=module:function``); ``heads``: rating heads (``shipped``, a folder
    or ``none``) whose ratings add to its score weighted by ``heads_add`` (``heads_choice`` "add")
    or choose among the ``heads_top`` it scores highest ("top")."""
    from secondthoughts import reward
    from secondthoughts.likelihood import RewriteLikelihood
    from secondthoughts.rating_heads import RatingHeads, heads_path

    kinds: dict[str, list[Any]] = {"alignment": [], "coherence": [], "likelihood": []}
    for spec in specs:
        kind, path = _kind_and_path(spec)
        if kind == "likelihood":
            kinds["likelihood"].append(RewriteLikelihood(path, device=kw.get("device")))
            continue
        fn = reward.load_scorer(path, **kw)
        if not kind:
            is_run = isinstance(fn, (reward.RewardModel, reward.RewardEnsemble))
            kind = reward.objective_of(fn) if is_run else getattr(fn, "objective", "alignment")
        kinds[kind].append(fn)
    rated = None if heads in (None, "none") else RatingHeads.load(heads_path(heads), device=kw.get("device"))
    return Reranker(kinds["alignment"], kinds["coherence"], coherence_weight, kinds["likelihood"], source_penalty, length_penalty, rated, heads_choice, heads_add, heads_top)


def check_reranker(
    specs: Sequence[str], coherence_weight: float = 1.0, source_penalty: float = 0.0, length_penalty: float = 0.0,
    heads: str | None = "none", heads_choice: str = HEADS_CHOICE, heads_add: Sequence[float] = tuple(HEADS_ADD), heads_top: int = HEADS_TOP,
) -> None:  # fmt: skip
    """Fail fast, before any model loads, on a spec that is neither a reward run folder, a
    direct-mode run folder nor ``module:function``, a negative weight, ``heads`` that is not a
    folder of rating heads, or a heads choice :func:`check_heads_choice` refuses."""
    from secondthoughts import reward
    from secondthoughts.likelihood import is_rewrite_run
    from secondthoughts.rating_heads import heads_path

    if not specs:
        raise ValueError(
            "--best-of above 1 needs --rerank: reward run folders (alignment and/or coherence), direct-mode run folders (likelihood) or module:function"
        )
    for flag, weight in (("coherence-weight", coherence_weight), ("source-penalty", source_penalty), ("length-penalty", length_penalty)):
        if weight < 0:
            raise ValueError(f"--{flag} must be >= 0, got {weight}")
    check_heads_choice(heads_choice, heads_add, heads_top)
    if heads not in (None, "none"):
        heads_path(heads)
    for spec in specs:
        kind, path = _kind_and_path(spec)
        if kind == "likelihood":
            if not is_rewrite_run(path):
                raise ValueError(f"--rerank {spec}: not a direct-mode run folder (secondthoughts train --mode direct)")
            continue
        reward.check_scorer(path, "--rerank")


def combined_reward(alignment: Sequence[float], coherence: Sequence[float], coherence_weight: float = 1.0) -> list[float]:
    """``P(aligned) * P(coherent) ** w`` (the exponential of :func:`combined_scores`): the RL reward
    with a coherence term, in [0, 1] like the alignment reward it replaces."""
    return [math.exp(x) for x in combined_scores(alignment, coherence, coherence_weight)]

