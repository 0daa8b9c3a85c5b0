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

The measures live in :mod:`secondthoughts.metrics`, the report in :mod:`secondthoughts.report`;
their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from secondthoughts import behaviour
from secondthoughts.data import Example
from secondthoughts.diffview import chain_stats
from secondthoughts.edits import infer_text_edits
from secondthoughts.metrics import (  # noqa: F401  (re-exported: the evaluation's public measures)
    OPS,
    Fluency,
    Missing,
    bleu_from_stats,
    bleu_stats,
    bootstrap_ci,
    corpus_bleu,
    faithfulness,
    is_missing,
    mean_ci,
    metric_value,
    missing,
    percentiles,
    perplexity,
    perplexity_ci,
    rouge_l,
    sentence_bleu,
)
from secondthoughts.report import (  # noqa: F401  (re-exported: the evaluation's report)
    Evaluation,
    cell,
    markdown_diff,
    plot_alignment,
    plot_chain_lengths,
    render_markdown,
    write_report,
)

RewardFn = Callable[[list[str], list[str]], list[float]]
HEADLINE = ("alignment", "alignment_second", "coherence", "coherence_vs_gold", "perplexity", "rouge_l", "bleu", "sari", "valid")


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
        return {"value": metric_value(x), "ci95": x.get("ci95")}

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


