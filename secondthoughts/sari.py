"""SARI (Xu et al., 2016, "Optimizing Statistical Machine Translation for Text Simplification").

No maintained package on PyPI computes SARI offline *with* its keep / add / delete parts
(``easse`` is not on PyPI, Hugging Face ``evaluate`` downloads its metric script, torchmetrics
returns the total only), so this module implements it, following the authors' reference
``SARI.py`` (which tensor2tensor's ``sari_hook`` and EASSE's sentence-level SARI also follow):

- n-grams of orders 1 to 4 over the tokens of the source (``I``), the output (``O``) and the
  references (``R``, counts summed over references); source and output counts are multiplied by
  the number of references;
- keep: F1 of precision and recall of the n-grams the output kept from the source, weighted by
  how many references kept them; delete: precision only (the paper's choice: recall would
  reward deleting too much); add: F1 over the n-grams the output added (as sets);
- each part averaged over the four orders; SARI is the mean of the three parts.

A ratio whose denominator is zero counts 0, as in the reference script (tensor2tensor later
counted it 1; with 0, an output that changes nothing earns no delete or add credit, which is
the behaviour we want when re-alignment must change something). Texts are lower-cased and
tokenized with sacrebleu's ``13a`` tokenizer, as EASSE does, so punctuation is its own token.
Scores are fractions in [0, 1]; reports multiply by 100.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

NGRAM_ORDER = 4


class Sari(NamedTuple):
    """SARI and its parts, each in [0, 1]."""

    sari: float
    keep: float  # F1 of kept n-grams
    delete: float  # precision of deleted n-grams
    add: float  # F1 of added n-grams


@functools.lru_cache(maxsize=1)
def _tokenizer_13a() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize_13a(text: str) -> list[str]:
    """Lower-cased sacrebleu ``13a`` tokens (punctuation split off, as EASSE normalizes)."""
    return _tokenizer_13a()(text.lower()).split()


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p > 0 or r > 0 else 0.0


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0  # the reference script's 0/0 = 0


def _scale(c: Counter[tuple[str, ...]], k: int) -> Counter[tuple[str, ...]]:
    return Counter({g: v * k for g, v in c.items()})


def sari_ngram(src: Counter, out: Counter, refs: Counter, num_refs: int) -> tuple[float, float, float]:
    """(keep F1, delete precision, add F1) for one n-gram order; ``refs`` summed over references."""
    src_rep, out_rep = _scale(src, num_refs), _scale(out, num_refs)

    kept = src_rep & out_rep  # kept by the output
    kept_good = kept & refs  # ... and by the references
    kept_all = src_rep & refs  # kept by the references
    keep_p = _ratio(sum(kept_good[g] / kept[g] for g in kept_good), len(kept))
    keep_r = _ratio(sum(kept_good[g] / kept_all[g] for g in kept_good), len(kept_all))

    deleted = src_rep - out_rep  # deleted by the output
    deleted_good = deleted - refs  # ... and by the references
    del_p = _ratio(sum(deleted_good[g] / deleted[g] for g in deleted_good), len(deleted))

    added = set(out) - set(src)  # added by the output (as sets: adding twice earns nothing more)
    added_all = set(refs) - set(src)
    add_good = len(added & set(refs))
    add_f = _f1(_ratio(add_good, len(added)), _ratio(add_good, len(added_all)))
    return _f1(keep_p, keep_r), del_p, add_f


def sentence_sari(source: str, output: str, references: Sequence[str], tokenize: Callable[[str], list[str]] = tokenize_13a) -> Sari:
    """SARI of one output against one or more references."""
    if not references:
        raise ValueError("SARI needs at least one reference")
    s, o = tokenize(source), tokenize(output)
    rs = [tokenize(r) for r in references]
    keep = delete = add = 0.0
    for n in range(1, NGRAM_ORDER + 1):
        refs: Counter[tuple[str, ...]] = Counter()
        for r in rs:
            refs += ngrams(r, n)
        k, d, a = sari_ngram(ngrams(s, n), ngrams(o, n), refs, len(rs))
        keep, delete, add = keep + k / NGRAM_ORDER, delete + d / NGRAM_ORDER, add + a / NGRAM_ORDER
    return Sari((keep + delete + add) / 3, keep, delete, add)


def corpus_sari(sources: Sequence[str], outputs: Sequence[str], references: Sequence[Sequence[str]]) -> Sari:
    """Mean of the sentence scores (the reference script's corpus score), part by part."""
    if not (len(sources) == len(outputs) == len(references)):
        raise ValueError(f"lengths differ: {len(sources)} sources, {len(outputs)} outputs, {len(references)} reference lists")
    if not sources:
        raise ValueError("SARI of an empty corpus")
    scores = [sentence_sari(s, o, r) for s, o, r in zip(sources, outputs, references)]
    return Sari(*(sum(p) / len(scores) for p in zip(*scores)))
