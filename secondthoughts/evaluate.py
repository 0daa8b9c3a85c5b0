"""Evaluate a re-aligner: how aligned, fluent and faithful its outputs are, and how it edits.

``evaluate(realigner, examples, ...)`` re-aligns every example and measures

- alignment: mean ``P(aligned)`` of a reward function (any ``score(contexts, texts)`` callable,
  e.g. ``reward.RewardModel``) for the outputs, with the sources and gold targets as reference
  rows, and the share of outputs scored above their source;
- fluency: perplexity under the *base* LM (see :class:`Fluency`): corpus perplexity, i.e.
  ``exp(total NLL / total tokens)`` of each text alone, conditioned on nothing but a start token;
- faithfulness to the gold target: ROUGE-L F1 (``rouge-score``, stemmed), corpus BLEU
  (``sacrebleu``, 13a) and SARI with its keep / add / delete parts (:mod:`secondthoughts.sari`),
  all on a 0-100 scale, with the unchanged source as a baseline row;
- edit behaviour: share of chains that parse and apply, edits and changed tokens per chain,
  operation mix, how much of the source was kept, share identical to the source, share that
  copy a context sentence (:mod:`secondthoughts.behaviour`), with the gold chains as reference;
- speed: examples/s over the whole run and per-example latency percentiles (an example's
  latency is the wall time of the batch that produced it: what a caller waits for).

Headline numbers carry seeded bootstrap 95% intervals (percentile method, examples resampled
with replacement; BLEU and perplexity are recomputed from resampled sufficient statistics).
A field that cannot be computed holds ``{"missing": reason}`` instead of a number.

``write_report(evaluation, out)`` writes ``report.md``, ``metrics.json``, ``outputs.jsonl``
and PNG plots into ``out`` atomically. ``evaluate_run`` loads a run folder, a reward run and
the base LM, as the ``secondthoughts evaluate`` command does.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts import behaviour
from secondthoughts.data import Example
from secondthoughts.diffview import chain_stats, html_diff
from secondthoughts.edits import infer_text_edits, tokenize
from secondthoughts.sari import sentence_sari

RewardFn = Callable[[list[str], list[str]], list[float]]
Missing = dict[str, str]
OPS = ("replace", "delete", "insert")
HEADLINE = ("alignment", "alignment_second", "coherence", "coherence_vs_gold", "perplexity", "rouge_l", "bleu", "sari", "valid")


def missing(reason: str) -> Missing:
    """The value of a field that cannot be computed: says why instead of a number."""
    return {"missing": reason}


def is_missing(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"missing"}


# ---------------------------------------------------------------- statistics


def bootstrap_ci(
    n: int, stat: Callable[[np.ndarray], float], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile interval of ``stat(indices)`` over ``resamples`` resamplings of ``n`` items.

    The same ``seed`` draws the same resamples for every statistic, so intervals are paired.
    None when there is nothing to resample (``n == 0`` or ``resamples == 0``).
    """
    if n == 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def mean_ci(values: Sequence[float | None], resamples: int, seed: int) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` over the values that are not None."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return missing("no values to average")
    return {"mean": float(arr.mean()), "ci95": bootstrap_ci(len(arr), lambda i: float(arr[i].mean()), resamples=resamples, seed=seed), "n": len(arr)}


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 95)) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs} if len(arr) else {}


# ---------------------------------------------------------------- faithfulness


def rouge_l(outputs: Sequence[str], targets: Sequence[str]) -> list[float]:
    """ROUGE-L F1 (0-100) of each output against its target (``rouge-score``, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100 * scorer.score(t, o)["rougeL"].fmeasure for o, t in zip(outputs, targets)]


def bleu_stats(outputs: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics (n-gram matches and totals, lengths), rows of
    sacrebleu's own bookkeeping: corpus BLEU is :func:`bleu_from_stats` of their sum, which is
    how sacrebleu's paired bootstrap resamples BLEU too."""
    from sacrebleu.metrics import BLEU

    return np.array(BLEU()._extract_corpus_statistics(list(outputs), [list(targets)]), dtype=np.int64).reshape(len(outputs), -1)


@functools.lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU()


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0-100) from summed sufficient statistics."""
    return float(_bleu()._compute_score_from_stats([int(x) for x in stats]).score)


def corpus_bleu(outputs: Sequence[str], targets: Sequence[str]) -> float:
    from sacrebleu.metrics import BLEU

    return float(BLEU().corpus_score(list(outputs), [list(targets)]).score)


def sentence_bleu(outputs: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Per-example BLEU with effective order (sacrebleu's sentence BLEU), for the outputs file."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return [float(bleu.sentence_score(o, [t]).score) for o, t in zip(outputs, targets)]


def faithfulness(
    sources: Sequence[str], outputs: Sequence[str], targets: Sequence[str], resamples: int, seed: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """ROUGE-L, corpus BLEU and SARI (with parts) of ``outputs`` against ``targets``, 0-100:
    the summary with intervals, and the per-example scores (sentence BLEU for BLEU)."""
    n = len(outputs)
    if n == 0:
        return missing("no examples"), {}
    stats = bleu_stats(outputs, targets)
    sari = np.array([sentence_sari(s, o, [t]) for s, o, t in zip(sources, outputs, targets)], dtype=float).reshape(n, 4) * 100
    per = {"rouge_l": rouge_l(outputs, targets), "bleu": sentence_bleu(outputs, targets),
           **{name: [float(x) for x in sari[:, k]] for k, name in enumerate(("sari", "sari_keep", "sari_delete", "sari_add"))}}  # fmt: skip
    summary = {
        "rouge_l": mean_ci(per["rouge_l"], resamples, seed),
        "bleu": {"corpus": bleu_from_stats(stats.sum(0)), "ci95": bootstrap_ci(n, lambda i: bleu_from_stats(stats[i].sum(0)), resamples=resamples, seed=seed)},
        "sari": mean_ci(per["sari"], resamples, seed),
        "sari_keep": float(sari[:, 1].mean()),
        "sari_delete": float(sari[:, 2].mean()),
        "sari_add": float(sari[:, 3].mean()),
    }
    return summary, per


# ---------------------------------------------------------------- fluency


@dataclass
class Fluency:
    """Scores texts under a causal LM: ``nll(texts) -> [(sum of token NLL, tokens)]``.

    ``adapter_off``: the model is a ``PeftModel`` whose adapter is switched off while scoring
    (peft's ``disable_adapter()``), i.e. the base LM. Each text is scored alone after one start
    token: ``<|endoftext|>`` where the vocabulary has it (the document separator of GPT-2 style
    pretraining, as in SmolLM2), else BOS, else EOS. Marker-like text is split into ordinary
    tokens (``split_special_tokens``), so a run's edit tokens never enter the base LM.

    ``excluded_ids``: vocabulary rows the base LM never had (a run's edit tokens, added to the
    shared embedding matrix): their logits are masked, so they take no probability mass and
    the scores equal those of the original model.
    """

    model: Any
    tokenizer: Any
    description: str
    adapter_off: bool = False
    excluded_ids: Sequence[int] = ()
    batch_size: int = 16
    max_tokens: int = 512

    def start_id(self) -> int:
        tok = self.tokenizer
        vocab_id = tok.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(vocab_id, int) and vocab_id != tok.unk_token_id:
            return vocab_id
        for cand in (tok.bos_token_id, tok.eos_token_id):
            if cand is not None:
                return int(cand)
        raise ValueError(f"{self.description}: the tokenizer has no <|endoftext|>, BOS or EOS token to start a text with")

    def nll(self, texts: Sequence[str], *, progress: bool = False) -> list[tuple[float, int]]:
        """Per text: (sum of token NLL, tokens)."""
        return [(float(-lp.sum()), len(lp)) for _, lp, _ in self.token_logprobs(texts, progress=progress)]

    def token_logprobs(self, texts: Sequence[str], *, progress: bool = False) -> list[tuple[list[int], np.ndarray, list[int]]]:
        """Per text: its token ids, each token's log-probability given the ones before (after the
        start token), and the character offset where each token starts."""
        import torch
        from tqdm.auto import tqdm

        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        toks = [x[: self.max_tokens] for x in enc["input_ids"]]
        starts = [[a for a, _ in off[: self.max_tokens]] for off in enc["offset_mapping"]]
        seqs = [[self.start_id(), *x] for x in toks]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out: list[tuple[list[int], np.ndarray, list[int]]] = [([], np.zeros(0), [])] * len(seqs)
        device = next(self.model.parameters()).device
        training = self.model.training
        self.model.eval()
        off = self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext()
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        try:
            with torch.inference_mode(), off:
                for idx in tqdm(batches, disable=not progress, desc="perplexity", unit="batch", leave=False, dynamic_ncols=True):
                    width = max(len(seqs[i]) for i in idx)
                    x = torch.zeros((len(idx), width), dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for r, i in enumerate(idx):  # right padding: positions start at 0 for every row
                        x[r, : len(seqs[i])] = torch.tensor(seqs[i])
                        mask[r, : len(seqs[i])] = 1
                    x, mask = x.to(device), mask.to(device)
                    logits = self.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
                    if self.excluded_ids:
                        logits[..., list(self.excluded_ids)] = float("-inf")
                    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
                    for r, i in enumerate(idx):
                        out[i] = (toks[i], -nll[r, : len(toks[i])].double().cpu().numpy(), starts[i])
        finally:
            self.model.train(training)
        return out


def perplexity(rows: Sequence[tuple[float, int]]) -> float:
    """Corpus perplexity ``exp(total NLL / total tokens)``; nan when there are no tokens."""
    tokens = sum(n for _, n in rows)
    return math.exp(sum(s for s, _ in rows) / tokens) if tokens else float("nan")


def perplexity_ci(rows: Sequence[tuple[float, int]], resamples: int, seed: int) -> dict[str, Any]:
    nll = np.array([s for s, _ in rows], dtype=float)
    tok = np.array([n for _, n in rows], dtype=float)
    if not tok.sum():
        return missing("no tokens to score")

    def stat(i: np.ndarray) -> float:
        t = tok[i].sum()
        return float(np.exp(nll[i].sum() / t)) if t else float("nan")

    per_text = [math.exp(s / n) for s, n in rows if n]
    return {"corpus": perplexity(rows), "ci95": bootstrap_ci(len(rows), stat, resamples=resamples, seed=seed),
            "median_per_text": float(np.median(per_text)), "tokens": int(tok.sum())}  # fmt: skip


# ---------------------------------------------------------------- edit behaviour


def chain_summary(chains: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Edits and changed tokens per chain, and the share of each operation among all edits."""
    if not chains:
        return missing("no chains")
    stats = [chain_stats(c) for c in chains]
    edits = [len(c) for c in chains]
    changed = [s["tokens_removed"] + s["tokens_written"] for s in stats]
    total = sum(edits)
    return {
        "chains": len(chains),
        "edits": {"mean": float(np.mean(edits)), **percentiles(edits), "max": int(max(edits))},
        "tokens_changed": {"mean": float(np.mean(changed)), **percentiles(changed)},
        "tokens_removed": float(np.mean([s["tokens_removed"] for s in stats])),
        "tokens_written": float(np.mean([s["tokens_written"] for s in stats])),
        "operations": {op: (sum(s[op] for s in stats) / total if total else 0.0) for op in OPS},
        "empty": sum(e == 0 for e in edits) / len(edits),
    }


# ---------------------------------------------------------------- the evaluation


@dataclass
class Evaluation:
    """What ``evaluate`` measured: ``metrics`` (as written to metrics.json) and one row per
    example (as written to outputs.jsonl)."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _realign(realigner: Any, examples: Sequence[Example], mode: str | None, batch_size: int, progress: bool, **gen: Any) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    results = realigner.realign_many([(e.context, e.source) for e in examples], batch_size=batch_size, mode=mode, progress=progress, **gen)
    return results, time.perf_counter() - t0


def _rows(examples: Sequence[Example], results: Sequence[Any], golds: Sequence[Sequence[Any]], mode: str,
          generated: bool = False) -> list[dict[str, Any]]:
    rows = []
    for ex, r, gold in zip(examples, results, golds):
        stats = chain_stats(r.chain)
        # generated: the target the model wrote after its chain (the paper's output), where it wrote one
        text = r.generated_target if generated and r.generated_target is not None else r.text
        rows.append({
            "id": ex.id, "context": ex.context, "source": ex.source, "target": ex.target, "output": text,
            "valid": r.valid if mode != "direct" else None, "error": r.error, "truncated": r.truncated,
            "chain": r.compact, "readable": r.readable, "edits": len(r.chain), **{op: stats[op] for op in OPS},
            "tokens_removed": stats["tokens_removed"], "tokens_written": stats["tokens_written"],
            "gold_edits": len(gold), "generated_target": r.generated_target, "disagrees": r.disagrees,
            "identical": behaviour.identical(ex.source, text), "copies_context": behaviour.copies_context(ex.context, text),
            "kept": behaviour.kept_share(ex.source, text),
            "latency_s": r.timings.get("total_s"), "new_tokens": r.timings.get("new_tokens"), "batch_size": r.timings.get("batch_size"),
        })  # fmt: skip
    return rows


def _scored(rows: list[dict[str, Any]], scorer: RewardFn | None, why_missing: str, resamples: int, seed: int, progress: bool,
            key: str = "reward") -> dict[str, Any]:
    """Mean score of sources, outputs and gold targets under ``scorer`` (alignment or coherence),
    each row getting ``{key}_source`` / ``_output`` / ``_target``; plus the share of outputs
    above their source and the outputs' mean as a share of the gold targets' (paired bootstrap)."""
    if scorer is None:
        return missing(why_missing)
    n = len(rows)
    contexts = [r["context"] for r in rows] * 3
    texts = [r["source"] for r in rows] + [r["output"] for r in rows] + [r["target"] for r in rows]
    from secondthoughts.reward import RewardEnsemble, RewardModel

    kw = {"progress": progress} if isinstance(scorer, (RewardModel, RewardEnsemble)) else {}  # any other callable takes (contexts, texts)
    scores = list(scorer(contexts, texts, **kw))
    if len(scores) != len(texts):
        raise ValueError(f"the {key} function returned {len(scores)} scores for {len(texts)} texts")
    for k, r in enumerate(rows):
        r[f"{key}_source"], r[f"{key}_output"], r[f"{key}_target"] = float(scores[k]), float(scores[n + k]), float(scores[2 * n + k])
    out = {name: mean_ci([r[f"{key}_{name[:-1]}"] for r in rows], resamples, seed) for name in ("sources", "outputs", "targets")}
    out["outputs_above_source"] = mean_ci([float(r[f"{key}_output"] > r[f"{key}_source"]) for r in rows], resamples, seed)
    outs = np.array([r[f"{key}_output"] for r in rows])
    golds = np.array([r[f"{key}_target"] for r in rows])
    if golds.sum() > 0:
        out["outputs_vs_targets"] = {"value": float(outs.mean() / golds.mean()), "ci95": bootstrap_ci(
            n, lambda i: float(outs[i].mean() / golds[i].mean()) if golds[i].sum() else float("nan"), resamples=resamples, seed=seed)}
    out["outputs_at_least_half"] = mean_ci([float(x >= 0.5) for x in outs], resamples, seed)
    return out


def _fluency(rows: list[dict[str, Any]], fluency: Fluency | str, resamples: int, seed: int, progress: bool) -> dict[str, Any]:
    if isinstance(fluency, str):
        return missing(fluency)
    kinds = ("source", "output", "target")
    distinct = list(dict.fromkeys(r[k] for r in rows for k in kinds))  # outputs often repeat sources
    scored = dict(zip(distinct, fluency.nll(distinct, progress=progress)))
    out: dict[str, Any] = {"base_lm": fluency.description}
    for k in kinds:
        nll = [scored[r[k]] for r in rows]
        for r, (s, t) in zip(rows, nll):
            r[f"ppl_{k}"] = math.exp(s / t) if t else None
        out[f"{k}s"] = perplexity_ci(nll, resamples, seed)
    return out


def _behaviour(rows: list[dict[str, Any]], results: Sequence[Any], examples: Sequence[Example], golds: Sequence[Sequence[Any]], mode: str,
               resamples: int, seed: int) -> dict[str, Any]:
    no_chain = f"{mode} mode writes text, not a chain of edits (the chain in outputs.jsonl is inferred from source to output)"
    contexts, sources = [e.context for e in examples], [e.source for e in examples]
    out: dict[str, Any] = {
        "valid": missing(no_chain) if mode == "direct" else mean_ci([float(r.valid) for r in results], resamples, seed),
        "truncated": missing(no_chain) if mode == "direct" else sum(r.truncated for r in results) / len(results),
        "chains": missing(no_chain) if mode == "direct" else chain_summary([r.chain for r in results if r.valid]),
        "gold_chains": chain_summary(golds),
        "outputs": behaviour.summarize(contexts, sources, [r["output"] for r in rows]),
        "targets": behaviour.summarize(contexts, sources, [e.target for e in examples]),
    }
    if mode == "generate":
        flags = [r.disagrees for r in results if r.disagrees is not None]
        out["generated_target_differs"] = sum(flags) / len(flags) if flags else missing("no chain was closed, so no target was generated")
    else:
        out["generated_target_differs"] = missing(f"{mode} mode does not generate a target after the chain")
    return out


def _speed(results: Sequence[Any], wall_s: float) -> dict[str, Any]:
    lat = [r.timings.get("total_s", float("nan")) for r in results]
    tokens = sum(int(r.timings.get("new_tokens", 0)) for r in results)
    return {
        "examples": len(results), "wall_s": wall_s,
        "examples_per_s": len(results) / wall_s if wall_s > 0 else missing("no time measured"),
        "new_tokens_per_s": tokens / wall_s if wall_s > 0 else missing("no time measured"),
        "latency_s": {**percentiles(lat, (50, 95)), "max": float(max(lat))},
        "batch_size": max(int(r.timings.get("batch_size", 1)) for r in results),
    }  # fmt: skip


def evaluate(
    realigner: Any,
    examples: Sequence[Example],
    *,
    reward: RewardFn | None = None,
    why_no_reward: str = "no reward model given (--reward RUN)",
    second_reward: RewardFn | None = None,
    coherence: RewardFn | None = None,
    fluency: Fluency | str = "no base LM to score fluency with",
    mode: str | None = None,
    batch_size: int = 8,
    resamples: int = 1000,
    seed: int = 0,
    progress: bool = False,
    info: dict[str, Any] | None = None,
    merge_adapter: bool = False,
    score_generated: bool = False,
    **generation: Any,
) -> Evaluation:
    """Re-align ``examples`` with ``realigner`` (a :class:`~secondthoughts.realign.Realigner`)
    and measure them; see the module docstring. ``second_reward``: another alignment scorer
    (``alignment_second``); ``coherence``: a coherence scorer (``secondthoughts.coherence``), each
    any callable ``(contexts, texts) -> scores``. ``fluency``: a :class:`Fluency`, or a string
    saying why there is none. ``generation``: further ``realign_many`` settings (e.g.
    ``max_new_tokens``, ``num_beams``). ``info``: extra facts for the report header.
    ``merge_adapter``: merge a LoRA adapter for generation and unmerge it afterwards (for a
    model this call owns; a policy being trained is better left as it is). ``score_generated``:
    in generate mode, measure the target the model wrote after its chain (the paper's decoding)
    instead of the chain applied."""
    if not examples:
        raise ValueError("no examples to evaluate")
    mode = mode or realigner.default_mode()
    with merged(realigner.model) if merge_adapter else contextlib.nullcontext():
        results, wall_s = _realign(realigner, examples, mode, batch_size, progress, **generation)
    golds = [infer_text_edits(e.source, e.target) for e in examples]  # the paper's costs (1, 1, 2)
    if score_generated and mode != "generate":
        raise ValueError("score_generated needs mode 'generate' (only then does the model write a target after its chain)")
    rows = _rows(examples, results, golds, mode, score_generated)
    outputs = [r["output"] for r in rows]
    sources, targets = [e.source for e in examples], [e.target for e in examples]
    faithful, per = faithfulness(sources, outputs, targets, resamples, seed)
    for k, row in enumerate(rows):
        row.update({name: values[k] for name, values in per.items()})
    metrics: dict[str, Any] = {
        "info": {"examples": len(examples), "mode": mode, "batch_size": batch_size, "bootstrap_resamples": resamples, "seed": seed,
                 "outputs": "generated target" if score_generated else "chain applied",
                 **(info or {}), **({"generation": _settings(generation)} if generation else {})},
        "alignment": _scored(rows, reward, why_no_reward, resamples, seed, progress),
        "alignment_second": _scored(rows, second_reward, "no second alignment scorer given (--second-reward RUN)", resamples, seed, progress, "reward2"),
        "coherence": _scored(rows, coherence, "no coherence scorer given (--coherence RUN)", resamples, seed, progress, "coherence"),
        "fluency": _fluency(rows, fluency, resamples, seed, progress),
        "faithfulness": {"outputs": faithful, "sources_unchanged": faithfulness(sources, sources, targets, 0, seed)[0]},
        "behaviour": _behaviour(rows, results, examples, golds, mode, resamples, seed),
        "speed": _speed(results, wall_s),
    }
    metrics["headline"] = headline(metrics)
    return Evaluation(metrics, rows)


def _settings(generation: dict[str, Any]) -> dict[str, Any]:
    """Generation settings as JSON: a callable (a reranker) by its class name."""
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__ for k, v in generation.items()}


def _value(x: Any) -> float | None:
    if not isinstance(x, dict) or is_missing(x):
        return None
    for key in ("mean", "corpus", "value"):
        if key in x:
            return x[key]
    return None


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers with their intervals, or why each is missing."""

    def pick(*path: str) -> Any:
        x: Any = m
        for p in path:
            if is_missing(x):
                return x
            x = x[p]
        if is_missing(x):
            return x
        return {"value": _value(x), "ci95": x.get("ci95")}

    return {
        "alignment": pick("alignment", "outputs"),
        "alignment_second": pick("alignment_second", "outputs"),
        "coherence": pick("coherence", "outputs"),
        "coherence_vs_gold": pick("coherence", "outputs_vs_targets"),
        "perplexity": pick("fluency", "outputs"),
        "rouge_l": pick("faithfulness", "outputs", "rouge_l"),
        "bleu": pick("faithfulness", "outputs", "bleu"),
        "sari": pick("faithfulness", "outputs", "sari"),
        "valid": pick("behaviour", "valid"),
    }


# ---------------------------------------------------------------- loading a run


@contextlib.contextmanager
def merged(model: Any) -> Iterator[None]:
    """Generate with a LoRA adapter merged into the weights (plain-model speed), then unmerge so
    that ``disable_adapter()`` gives the base LM again. A plain model passes through."""
    if not hasattr(model, "merge_adapter"):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def base_fluency(run: str | os.PathLike[str], model: Any, tokenizer: Any, base_lm: str | None = None, *, device: Any = None, dtype: Any = None) -> Fluency | str:
    """The base LM of ``run`` as a :class:`Fluency`, or why there is none.

    ``base_lm`` (a name ``models.load`` reads) overrides; otherwise a LoRA run is scored by its
    own model with the adapter off, and a full fine-tune by the model named in its config.json.
    """
    from secondthoughts import models
    from secondthoughts.realign import run_info

    if base_lm is None and hasattr(model, "disable_adapter"):
        name = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", "?")
        try:
            excluded = models.edit_token_ids(tokenizer)
        except KeyError:
            excluded = []
        return Fluency(model, tokenizer, f"{name} (the run's base model: its LoRA adapter disabled)", adapter_off=True, excluded_ids=excluded)
    if base_lm is None:
        info = run_info(run)
        if not info or not info.get("model"):
            return f"{run} records no base model (no config.json with train.model): pass --base-lm"
        base_lm, how = str(info["model"]), "the run's base model, loaded from its config.json"
    else:
        how = "given by --base-lm"
    try:
        base, base_tok = models.load(base_lm, device=device, dtype=dtype)
    except (OSError, ValueError) as e:
        return f"base LM {base_lm!r} could not be loaded: {e}"
    return Fluency(base, base_tok, f"{base_lm} ({how})")


def evaluate_run(
    run: str | os.PathLike[str],
    examples: Sequence[Example],
    *,
    reward_run: str | os.PathLike[str] | None = None,
    second_reward_run: str | None = None,
    coherence_run: str | None = None,
    base_lm: str | None = None,
    device: Any = None,
    dtype: Any = None,
    **kw: Any,
) -> Evaluation:
    """Load the run (LoRA adapters merged for generation), the reward model and the base LM,
    then :func:`evaluate`. ``kw`` goes to :func:`evaluate`."""
    from secondthoughts import models
    from secondthoughts.realign import Realigner, chain_format, run_info

    model, tokenizer = models.load(str(run), device=device, dtype=dtype)
    info = run_info(run) or {}
    realigner = Realigner.from_model(
        model, tokenizer, trained_mode=info.get("mode"), max_length=info.get("max_length"), chain_format=chain_format(info)
    )
    realigner.name = str(run)
    from secondthoughts.reward import load_scorer

    scorers = {name: load_scorer(str(spec), device=device) if spec else None
               for name, spec in (("reward", reward_run), ("second_reward", second_reward_run), ("coherence", coherence_run))}
    fluency = base_fluency(run, model, tokenizer, base_lm, device=device, dtype=dtype)

    extra = {"model": str(run), "reward": str(reward_run) if reward_run else None, "second_reward": second_reward_run,
             "coherence": coherence_run, "trained_mode": info.get("mode")}
    # Generation runs with the adapter merged; fluency afterwards, with it unmerged and off.
    return evaluate(realigner, examples, **scorers, fluency=fluency, merge_adapter=True, info={**extra, **kw.pop("info", {})}, **kw)


# ---------------------------------------------------------------- report


def markdown_diff(source: str, chain: Sequence[Any]) -> str:
    """The inline diff (``diffview.html_diff``: ``<del>`` removed, ``<ins>`` written) as one
    markdown table cell."""
    return html_diff(tokenize(source), chain).replace("|", "&#124;").replace("\n", " ")


def _esc(text: str) -> str:
    """HTML-escape for a markdown table cell (quotes need no escaping outside attributes)."""
    return html.escape(text, quote=False)


def _fmt(x: Any, digits: int = 3) -> str:
    if is_missing(x):
        return f"n/a ({x['missing']})"
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _cell(x: Any, digits: int = 3) -> str:
    """A number with its interval, e.g. ``0.612 [0.580, 0.644]``, or why it is missing."""
    if is_missing(x) or not isinstance(x, dict):
        return _fmt(x, digits)
    v, ci = _value(x), x.get("ci95")
    return _fmt(v, digits) + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _get(m: Any, *path: str) -> Any:
    for p in path:
        if is_missing(m):
            return m
        m = m[p]
    return m


def _chain_cell(c: Any, key: str) -> str:
    if is_missing(c):
        return _fmt(c)
    d = c[key]
    return f"{d['mean']:.2f} / {d['p50']:.0f} / {d['p90']:.0f}"


def _ops_cell(c: Any) -> str:
    return _fmt(c) if is_missing(c) else " / ".join(f"{c['operations'][op]:.0%}" for op in OPS)


def render_markdown(ev: Evaluation, shown: int = 6, plots: dict[str, Any] | None = None) -> str:
    m, info = ev.metrics, ev.metrics["info"]
    al, fl, fa, be, sp = m["alignment"], m["fluency"], m["faithfulness"], m["behaviour"], m["speed"]
    al2, co = m.get("alignment_second", missing("not measured")), m.get("coherence", missing("not measured"))
    out, ref = fa["outputs"], fa["sources_unchanged"]
    lines = [
        f"# Evaluation of `{info.get('model', 'a re-aligner')}`", "",
        (f"{info['examples']} examples from `{info.get('data', '?')}`{' (first ' + str(info['limit']) + ')' if info.get('limit') else ''}; "
         f"mode `{info['mode']}`, batch size {info['batch_size']}; reward model: `{info.get('reward') or 'none'}`; "
         f"fluency under: {fl['base_lm'] if not is_missing(fl) else 'none'}. "
         f"Brackets: bootstrap 95% intervals ({info['bootstrap_resamples']} resamples, seed {info['seed']})."), "",
        "## Summary", "",
        "| metric | sources | outputs | gold targets |", "|---|---|---|---|",
        f"| alignment: mean P(aligned) | {_cell(_get(al, 'sources'))} | {_cell(_get(al, 'outputs'))} | {_cell(_get(al, 'targets'))} |",
        f"| outputs scored above their source | | {_cell(_get(al, 'outputs_above_source'))} | |",
        f"| alignment, second scorer | {_cell(_get(al2, 'sources'))} | {_cell(_get(al2, 'outputs'))} | {_cell(_get(al2, 'targets'))} |",
        f"| coherence: mean P(coherent) | {_cell(_get(co, 'sources'))} | {_cell(_get(co, 'outputs'))} | {_cell(_get(co, 'targets'))} |",
        f"| coherence of outputs as a share of the gold targets' | | {_cell(_get(co, 'outputs_vs_targets'))} | 1 |",
        f"| P(coherent) >= 0.5 | | {_cell(_get(co, 'outputs_at_least_half'))} | |",
        f"| perplexity under the base LM | {_cell(_get(fl, 'sources'), 2)} | {_cell(_get(fl, 'outputs'), 2)} | {_cell(_get(fl, 'targets'), 2)} |",
        f"| ROUGE-L F1 vs target (0-100) | {_cell(_get(ref, 'rouge_l'), 1)} | {_cell(_get(out, 'rouge_l'), 1)} | 100 |",
        f"| BLEU vs target | {_cell(_get(ref, 'bleu'), 1)} | {_cell(_get(out, 'bleu'), 1)} | 100 |",
        f"| SARI (0-100) | {_cell(_get(ref, 'sari'), 1)} | {_cell(_get(out, 'sari'), 1)} | |",
        f"| SARI keep / add / delete | {_sari_parts(ref)} | {_sari_parts(out)} | |",
        f"| chains that parse and apply | | {_cell(be['valid'])} | |",
        f"| edits per chain: mean / median / p90 | | {_chain_cell(be['chains'], 'edits')} | {_chain_cell(be['gold_chains'], 'edits')} |",
        f"| tokens changed per chain: mean / median / p90 | | {_chain_cell(be['chains'], 'tokens_changed')} | {_chain_cell(be['gold_chains'], 'tokens_changed')} |",
        f"| operations: replace / delete / insert | | {_ops_cell(be['chains'])} | {_ops_cell(be['gold_chains'])} |",
        f"| share of the source kept | 1.000 | {_fmt(be['outputs']['kept'])} | {_fmt(be['targets']['kept'])} |",
        f"| identical to the source | 1.000 | {_fmt(be['outputs']['identical'])} | {_fmt(be['targets']['identical'])} |",
        f"| copies a context sentence | | {_fmt(be['outputs']['copies_context'])} | {_fmt(be['targets']['copies_context'])} |",
        "", ("The sources column scores each source as if it were the output (the do-nothing baseline); gold chains are "
             "inferred from source to target with costs (1, 1, 2)."), "",
        "## Speed", "",
        "| examples/s | new tokens/s | latency p50 | latency p95 | max | batch size |", "|---|---|---|---|---|---|",
        (f"| {_fmt(sp['examples_per_s'], 2)} | {_fmt(sp['new_tokens_per_s'], 1)} | {_fmt(sp['latency_s'].get('p50'), 2)} s | "
         f"{_fmt(sp['latency_s'].get('p95'), 2)} s | {_fmt(sp['latency_s']['max'], 2)} s | {sp['batch_size']} |"), "",
        "An example's latency is the wall time of the batch that produced it.",
    ]  # fmt: skip
    if not is_missing(be.get("truncated")) and be["truncated"]:
        lines.append(f"\n{be['truncated']:.1%} of the chains were cut by the token budget and closed after their last complete edit.")
    if not is_missing(be["generated_target_differs"]):
        lines.append(f"\nIn {be['generated_target_differs']:.1%} of the closed chains the generated target differs from the chain applied (outputs are the chain applied).")
    lines += ["", "## Plots", ""]
    for name, title in (("alignment", "Alignment before / after"), ("chain_lengths", "Chain lengths")):
        p = (plots or {}).get(name)
        lines.append(f"![{title}]({p})" if isinstance(p, str) else f"{title}: not drawn ({p['missing'] if is_missing(p) else 'no plot'})")
        lines.append("")
    lines += _example_rows(ev, shown)
    return "\n".join(lines) + "\n"


def _sari_parts(f: Any) -> str:
    return _fmt(f) if is_missing(f) else f"{f['sari_keep']:.1f} / {f['sari_add']:.1f} / {f['sari_delete']:.1f}"


def _shown_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``n`` rows (first and last included)."""
    if n == 0 or k <= 0:
        return []
    k = min(k, n)
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _example_rows(ev: Evaluation, shown: int) -> list[str]:
    from secondthoughts.edits import EditError, parse_compact

    idx = _shown_indices(len(ev.rows), shown)
    if not idx:
        return []
    lines = ["## Examples", "", "<del>removed</del>, <ins>written</ins>; rows spread evenly over the data.", "",
             "| id | context | output (diff from source) | gold target | reward (src → out) | ROUGE-L |", "|---|---|---|---|---|---|"]  # fmt: skip
    for i in idx:
        r = ev.rows[i]
        try:
            if r["valid"] is False:
                raise EditError(r["error"] or "invalid chain")
            diff = markdown_diff(r["source"], parse_compact(r["chain"], r["source"]) if r["chain"] else [])
        except EditError as e:  # the output is the source unchanged: say why
            diff = _esc(r["source"]) + f" <i>(invalid chain: {_esc(str(e))})</i>"
        rew = f"{r['reward_source']:.2f} → {r['reward_output']:.2f}" if "reward_output" in r else "n/a"
        ctx = r["context"] if len(r["context"]) <= 160 else r["context"][:157] + "..."
        cells = [_esc(str(r["id"])), _esc(ctx), diff, _esc(r["target"]), rew, f"{r['rouge_l']:.1f}"]
        lines.append("| " + " | ".join(c.replace("|", "&#124;").replace("\n", " ") for c in cells) + " |")
    return [*lines, ""]


# ---------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alignment(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Distributions of P(aligned) for sources, outputs and gold targets, means marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        bins = np.linspace(0, 1, 21)
        for key, label, color in (("reward_source", "sources", "tab:red"), ("reward_output", "outputs", "tab:blue"), ("reward_target", "gold targets", "tab:green")):
            vals = [r[key] for r in rows]
            ax.hist(vals, bins=bins, histtype="step", linewidth=1.8, color=color, label=f"{label} (mean {np.mean(vals):.2f})")
            ax.axvline(float(np.mean(vals)), color=color, linestyle="--", linewidth=1)
        ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("reward model P(aligned)")
        ax.set_ylabel("examples")
        ax.set_title(f"Alignment before / after re-alignment ({len(rows)} examples)")
        ax.legend(loc="upper center")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_chain_lengths(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Histogram of edits per chain: the model's valid chains beside the gold chains."""
    plt = _pyplot()
    model = Counter(r["edits"] for r in rows if r["valid"])
    gold = Counter(r["gold_edits"] for r in rows)
    xs = np.arange(0, max([*model, *gold, 0]) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        ax.bar(xs - 0.2, [model[x] for x in xs], width=0.4, label=f"model ({sum(model.values())} valid chains)", color="tab:blue")
        ax.bar(xs + 0.2, [gold[x] for x in xs], width=0.4, label="gold (costs 1,1,2)", color="tab:gray")
        ax.set_xlabel("edits per chain")
        ax.set_ylabel("examples")
        ax.set_title("Chain length")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _write_plots(ev: Evaluation, folder: Path) -> dict[str, Any]:
    plots: dict[str, Any] = {}
    if is_missing(ev.metrics["alignment"]):
        plots["alignment"] = ev.metrics["alignment"]
    else:
        plot_alignment(ev.rows, folder / "alignment.png")
        plots["alignment"] = "alignment.png"
    chains = ev.metrics["behaviour"]["chains"]
    if is_missing(chains):
        plots["chain_lengths"] = chains
    else:
        plot_chain_lengths(ev.rows, folder / "chain_lengths.png")
        plots["chain_lengths"] = "chain_lengths.png"
    return plots


def _json_safe(x: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); containers recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(ev: Evaluation, out: str | os.PathLike[str], *, shown: int = 6, overwrite: bool = False) -> Path:
    """Write report.md, metrics.json, outputs.jsonl and the plots into ``out``: built in a
    temporary folder beside it and renamed into place (:func:`runs.write_dir`), so a reader never
    sees half a report. An existing ``out`` is replaced only with ``overwrite``."""
    from secondthoughts.runs import write_dir

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")

    def write(tmp: Path) -> None:
        plots = _write_plots(ev, tmp)
        metrics = _json_safe({**ev.metrics, "plots": plots})
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(tmp / "outputs.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(_json_safe(r), ensure_ascii=False) + "\n" for r in ev.rows)
        (tmp / "report.md").write_text(render_markdown(ev, shown, plots), encoding="utf-8")

    return write_dir(out, write)  # the previous report (if any) is replaced in two renames
