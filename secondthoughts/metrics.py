"""The measures of an evaluation (:mod:`secondthoughts.evaluate`): seeded bootstrap intervals,
faithfulness to the gold target (ROUGE-L, BLEU, SARI), fluency as perplexity under the base LM
(:class:`Fluency`), and ``{"missing": reason}`` for a field that cannot be computed."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secondthoughts.sari import sentence_sari

Missing = dict[str, str]
OPS = ("replace", "delete", "insert")


def missing(reason: str) -> Missing:
    """The value of a field that cannot be computed: says why instead of a number."""
    return {"missing": reason}


def is_missing(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"missing"}


def metric_value(x: Any) -> float | None:
    """The number of a metric field (its mean, corpus value or headline value); None when missing."""
    if not isinstance(x, dict) or is_missing(x):
        return None
    for key in ("mean", "corpus", "value"):
        if key in x:
            return x[key]
    return None


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


