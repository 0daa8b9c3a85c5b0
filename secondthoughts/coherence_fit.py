"""A coherence measure fitted on hand labels of real model outputs: a logistic regression over
nine features that the embedded language model and the text's surface give.

The learned cross-encoder (``reward train --objective coherence``) was trained on synthetic
splices and sees them, but a model that has stopped splicing fails in other ways: phrases said
twice ("he's a good kid and that he's a good kid"), run-on additions, sentences that do not fit the
situation. On 700 hand-labelled outputs of seven systems (docs/coherence.md) the base LM's
log-probability of the text *in its context*, the text's length and its own repeats together told
them apart (story-grouped cross-validated AUC 0.77), each alone near chance; on fresh stories read
by fresh raters, though, the fit fell to 0.57 [0.46, 0.69], and it ranks long gold texts below
model outputs. So it is a tool for fitting *your* labels (``reward fit-coherence`` reports the
cross-validated AUC first), not a measure the project ships.

Features (:data:`FEATURES`), for a text after its context:

- ``mean_logp``, ``min_logp``: mean and lowest token log-probability of the text alone;
- ``mean_logp_in_context``, ``min_logp_in_context``: the same for its tokens after the context;
- ``gain_from_context``: the difference of the two means (how much the situation predicts it);
- ``words``: its length in words; ``ends_sentence``: it ends with . ! or ?;
- ``repeats_2gram``, ``repeats_3gram``: it repeats a word bigram / trigram of its own.

:class:`FittedCoherence` holds the standardisation and the weights (``fit`` trains them by
L2-regularised Newton steps, ``save`` / ``load`` a folder with ``config.json``);
:class:`LMCoherence` is the scorer: ``(contexts, texts) -> P(coherent)``, a ``ScoreFn`` like the
reward's. The weights are tied to the language model they were fitted with (recorded as ``lm``).
It ranks outputs of a system; it is not a reward to optimise (it prefers shorter texts, so a
policy could learn stubs from it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT, VERSION = "secondthoughts-coherence-fit", 1
FEATURES = (
    "mean_logp", "min_logp", "mean_logp_in_context", "gain_from_context", "min_logp_in_context",
    "words", "ends_sentence", "repeats_2gram", "repeats_3gram",
)  # fmt: skip
_WORD = re.compile(r"[\w']+")


def _repeats(words: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return float(len(grams) != len(set(grams)))


def features(fluency: Any, contexts: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """The :data:`FEATURES` of each text (rows) under ``fluency`` (``metrics.Fluency``)."""
    if len(contexts) != len(texts):
        raise ValueError(f"{len(contexts)} contexts but {len(texts)} texts")
    alone = fluency.token_logprobs(list(texts))
    joined = [f"{c} {t}" if c else t for c, t in zip(contexts, texts)]
    within = fluency.token_logprobs(joined)
    rows = []
    for c, t, (_, lp, _), (_, lpc, starts) in zip(contexts, texts, alone, within):
        after = len(c) if c else 0  # the text's first token starts at the space after the context
        tail = lpc[[k for k, s in enumerate(starts) if s >= after]] if len(lpc) else lpc
        if not len(lp) or not len(tail):
            raise ValueError(f"empty text cannot be scored: {t!r}")
        words = _WORD.findall(t.lower())
        rows.append([
            lp.mean(), lp.min(), tail.mean(), tail.mean() - lp.mean(), tail.min(),
            len(words), float(t.rstrip()[-1:] in ".!?"), _repeats(words, 2), _repeats(words, 3),
        ])  # fmt: skip
    return np.asarray(rows, dtype=float)


def _logistic(X: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """Weights and intercept minimising the summed log-loss + l2/2 |w|^2 (intercept free), by Newton steps."""
    A = np.column_stack([X, np.ones(len(X))])
    w = np.zeros(A.shape[1])
    reg = np.full(A.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ w))
        grad = A.T @ (p - y) + reg * w
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


@dataclass
class FittedCoherence:
    """Standardisation and logistic weights over :data:`FEATURES`, and what they were fitted on."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    lm: str = "embedded"
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    fitted_on: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, y: Sequence[int], *, l2: float = 1.0, lm: str = "embedded", **info: Any) -> FittedCoherence:
        y = np.asarray(y, dtype=float)
        if set(np.unique(y)) != {0.0, 1.0}:
            raise ValueError("fitting needs both coherent (1) and broken (0) labels")
        mean, scale = X.mean(0), X.std(0)
        scale[scale == 0] = 1.0
        coef, intercept = _logistic((X - mean) / scale, y, l2)
        return cls(mean.tolist(), scale.tolist(), coef.tolist(), intercept, lm, list(FEATURES), {"texts": len(y), "coherent": int(y.sum()), "l2": l2, **info})

    def logit(self, X: np.ndarray) -> np.ndarray:
        return ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept

    def probability(self, X: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logit(X)))

    def save(self, path: str | os.PathLike[str], card: str = "") -> None:
        from secondthoughts.atomic import write_atomic

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=2) + "\n")
        if card:
            write_atomic(out / "README.md", card)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FittedCoherence:
        info_path = Path(path) / "config.json"
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.pop("format", None) != FORMAT or info.pop("version", None) != VERSION:
            raise ValueError(f"{info_path}: not a {FORMAT} v{VERSION} folder")
        fitted = cls(**info)
        if fitted.features != list(FEATURES) or not len(fitted.coef) == len(fitted.mean) == len(fitted.scale) == len(FEATURES):
            raise ValueError(f"{info_path}: fitted on features {fitted.features}, this version computes {list(FEATURES)}")
        return fitted


def group_folds(groups: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold per row such that each group (a story's versions) lies in one fold, the groups
    shuffled by ``seed`` and dealt round the folds."""
    keys = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[k]: i % folds for i, k in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def cross_validated(X: np.ndarray, y: Sequence[int], groups: Sequence[str], *, folds: int = 5, l2: float = 1.0, seed: int = 0) -> np.ndarray:
    """Each text's held-out logit, from a fit on the other folds (:func:`group_folds`: a story's
    versions stay on one side, else its other versions would leak its context)."""
    fold = group_folds(groups, folds, seed)
    y = np.asarray(y)
    out = np.zeros(len(y))
    for f in range(folds):
        test = fold == f
        if test.any():
            out[test] = FittedCoherence.fit(X[~test], y[~test], l2=l2).logit(X[test])
    return out


def is_fitted_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder :meth:`FittedCoherence.load` reads."""
    info = Path(path) / "config.json"
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class LMCoherence:
    """``(contexts, texts) -> P(coherent)`` from :class:`FittedCoherence` weights and the language
    model they were fitted with (``fluency``: a ``metrics.Fluency`` over it)."""

    objective = "coherence"

    def __init__(self, fitted: FittedCoherence, fluency: Any):
        self.fitted, self.fluency = fitted, fluency

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: Any = None) -> LMCoherence:
        import torch

        from secondthoughts import models
        from secondthoughts.metrics import Fluency

        fitted = FittedCoherence.load(path)
        model, tokenizer = models.load(fitted.lm, dtype=torch.float32, device=device)
        return cls(fitted, Fluency(model, tokenizer, fitted.lm))

    def __call__(self, contexts: list[str], texts: list[str]) -> list[float]:
        return self.fitted.probability(features(self.fluency, contexts, texts)).tolist()


def model_card(fitted: FittedCoherence) -> str:
    """A README for a fitted folder: what it measures, its weights and its validation."""
    info = fitted.fitted_on
    cv = info.get("cross_validated_auc")
    lines = [
        "# Coherence measure: logistic regression over language-model features",
        "",
        f"P(coherent) of a text after its context, from the log-probabilities `{fitted.lm}` gives it and its surface",
        "(`secondthoughts.coherence_fit`). Use it as a scorer wherever a coherence run folder is taken",
        "(`evaluate --coherence`, `--rerank`); it ranks outputs, it is not a reward to optimise (it prefers short texts).",
        "",
        f"Fitted on {info.get('texts')} hand-labelled texts ({info.get('coherent')} coherent), L2 {info.get('l2')}: {info.get('labelled', '?')}.",
    ]
    if cv:
        lines.append(f"Cross-validated AUC ({cv['folds']} folds of whole stories, {cv['groups']} stories): "
                     f"{cv['auc']:.3f} [{cv['ci95'][0]:.3f}, {cv['ci95'][1]:.3f}].")
    lines += ["", "| feature | mean | sd | weight (standardised) |", "|---|---|---|---|"]
    lines += [f"| {n} | {m:.3f} | {s:.3f} | {w:+.3f} |" for n, m, s, w in zip(fitted.features, fitted.mean, fitted.scale, fitted.coef)]
    lines += [f"| intercept | | | {fitted.intercept:+.3f} |", ""]
    return "\n".join(lines)
