"""``secondthoughts reward``: train the value-alignment reward model, or score a JSONL with it.

    secondthoughts reward train --data train.jsonl [--dev dev.jsonl] --out runs/reward [--max-train N] [--epochs 1] ...
    secondthoughts reward train --data train.jsonl --dev dev.jsonl --out runs/reward3 --members 3
    secondthoughts reward ensemble --runs runs/a runs/b --out runs/ab [--dev dev.jsonl]
    secondthoughts reward score --model runs/reward --input in.jsonl --output out.jsonl [--text-field target]
    secondthoughts reward evaluate --model runs/reward --data dev.jsonl [--views context]
    secondthoughts reward fit-coherence --labelled labels.jsonl --out runs/coherence-fit

``train`` reads normalized examples (``secondthoughts prepare`` writes them); every field of
:class:`secondthoughts.reward.RewardConfig` is a flag (``--backbone PATH``, ``--head frozen``, ...).
It reports held-out accuracy per text (targets, sources and context sentences as hard
negatives) and pairwise accuracy (target above source), and writes them to the run folder.
``--members N`` trains N models with seeds seed, seed+1, ... and saves them as one ensemble
(``reward.RewardEnsemble``); each finished member is kept, so a killed run picks up where it was.
``ensemble`` combines runs trained before (copied into the new folder). ``fit-coherence`` fits
the LM-feature coherence measure (``coherence_fit``) to hand-labelled texts and reports its
cross-validated AUC first (folds of whole stories where rows carry an ``id``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from secondthoughts import settings
from secondthoughts.data import DataError, Example, RowError, jsonl_rows, read_examples, shuffled, split_examples
from secondthoughts.precision import PRECISIONS
from secondthoughts.reward import VIEWS, RewardConfig
from secondthoughts.atomic import write_atomic

OUTPUT_FLAGS = ("--output",)  # refused by cli.precheck when a folder, before the model loads

DTYPE_HELP = (
    "float32 (exact); bfloat16 (~1.7x faster on CPUs with AVX512-BF16/AMX, same accuracy); int8: Linear layers "
    "quantized per channel (CPU, ~2x faster, pairwise accuracy within 0.003 of float32 measured, scores depend "
    "slightly on batching); auto: bfloat16 where native, else int8 on CPUs"
)


_f = settings.setting


@dataclass
class RewardSplit:
    """What ``reward train`` trains on and holds out."""

    data: str = _f("", "training examples JSONL (context, source, target; from `secondthoughts prepare`)", required=True)
    dev: str | None = _f(None, "held-out examples JSONL; default: hold out --dev-fraction of --data", type=str)
    dev_fraction: float = _f(0.1, "share of --data held out when --dev is not given")
    max_train: int | None = _f(None, "train on at most N examples (a seeded sample)", type=int, metavar="N")
    max_dev: int | None = _f(None, "evaluate on at most N held-out examples (a seeded sample)", type=int, metavar="N")


@dataclass
class ScoreSettings:
    """How ``reward score`` reads, scores and writes texts (``views`` also for evaluate and ensemble)."""

    text_field: str = _f("target", "field holding the text to score")
    context_field: str = _f("context", "field holding the context")
    reward_field: str = _f("reward", "field to write the score to")
    batch_size: int = _f(32, "texts per forward pass")
    views: str | None = _f(None, "score this way instead of as the run says", type=str, choices=VIEWS)
    dtype: str = _f("auto", DTYPE_HELP, choices=PRECISIONS)


@dataclass
class TrainOutput:
    """Where ``reward train`` writes, and how many members."""

    out: str | None = _f(None, "run folder to write (config, weights, tokenizer, metrics, model card)", type=str, required=True)
    overwrite: bool = _f(False, "replace an existing run folder", flag="--overwrite")
    members: int = _f(1, "train N models (seeds seed..seed+N-1) and save them as one ensemble scoring their mean log-odds")


@dataclass
class EnsembleOptions:
    """``reward ensemble``'s flags (and ``views``)."""

    runs: list[str] = _f([], "reward model run folders (single models)", required=True)  # noqa: RUF009 (setting copies lists)
    out: str | None = _f(None, "ensemble folder to write", type=str, required=True)
    dev: str | None = _f(None, "held-out examples JSONL to report the members' and the ensemble's accuracy on", type=str)
    max_dev: int | None = _f(None, "evaluate on at most N held-out examples (a seeded sample)", type=int, metavar="N")
    overwrite: bool = _f(False, "replace an existing folder", flag="--overwrite")


@dataclass
class RewardEvaluateOptions:
    """``reward evaluate``'s flags (and ``views``)."""

    model: str | None = _f(None, "reward model run folder or ensemble folder", type=str, required=True)
    data: str | None = _f(None, "held-out examples JSONL (context, source, target)", type=str, required=True)
    max_dev: int | None = _f(None, "evaluate on at most N examples (a seeded sample)", type=int, metavar="N")
    output: str | None = _f(None, "also write the metrics to this JSON file", type=str)
    dtype: str = _f("float32", DTYPE_HELP + " (float32: a report is exact)", choices=PRECISIONS)


@dataclass
class ScoreFiles:
    """What ``reward score`` reads and writes (how: ``ScoreSettings``)."""

    model: str | None = _f(None, "reward model run folder or ensemble folder", type=str, required=True)
    input: str | None = _f(None, "JSONL with a context field and a text field per row", type=str, required=True)
    output: str | None = _f(None, "where to write the rows with the reward added", type=str, required=True)


@dataclass
class FitCoherenceOptions:
    """``reward fit-coherence``'s flags."""

    labelled: str | None = _f(None, "JSONL of {context, text, label (1 coherent / 0 broken), id (story, optional)}", type=str, required=True)
    out: str | None = _f(None, "folder to write (config.json with the weights, README.md)", type=str, required=True)
    lm: str = _f("embedded", "language model whose log-probabilities are features")
    l2: float = _f(1.0, "L2 penalty on the standardised weights")
    folds: int = _f(5, "cross-validation folds reported before the final fit (0: none)")
    overwrite: bool = _f(False, "replace an existing folder", flag="--overwrite")


def settings_parts(args: argparse.Namespace) -> list[settings.Part]:
    """Each action's settings dataclasses (and the fields it takes of them)."""
    views = ("views",)
    return {
        "train": [(RewardSplit, None), (TrainOutput, None), (RewardConfig, None)],
        "ensemble": [(EnsembleOptions, None), (ScoreSettings, views)],
        "evaluate": [(RewardEvaluateOptions, None), (ScoreSettings, views)],
        "score": [(ScoreFiles, None), (ScoreSettings, None)],
        "fit-coherence": [(FitCoherenceOptions, None)],
    }[args.action]  # type: ignore[return-value]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions = {
        "train": ("train a reward model on examples", "train a reward model on (context, source, target) examples"),
        "ensemble": ("combine trained reward runs into one ensemble", "copy reward runs into one ensemble folder that scores their mean log-odds"),
        "evaluate": ("held-out accuracy of a reward run or ensemble", "accuracy per text, pairwise and echo accuracy of a reward run or ensemble on examples"),
        "score": ("score texts in a JSONL", "append P(aligned) to every row of a JSONL"),
        "fit-coherence": ("fit the LM-feature coherence measure to hand labels", "fit a logistic regression over language-model features to hand-labelled texts (coherence_fit)"),
    }  # fmt: skip
    for action, (help_text, description) in actions.items():
        a = sub.add_parser(action, help=help_text, description=description)
        a.set_defaults(command_parser=a)  # its errors name the action and its own --help
        settings.add_config_flag(a, f"reward {action} settings")
        settings.add_parts(a, settings_parts(argparse.Namespace(action=action)))


def run(args: argparse.Namespace) -> int:
    # Errors become one line in cli.main (with --debug, the traceback).
    actions = {"train": _train, "ensemble": _ensemble, "evaluate": _evaluate, "score": _score, "fit-coherence": _fit_coherence}
    return actions[args.action](args)


def _fit_coherence(args: argparse.Namespace) -> int:
    from secondthoughts.coherence import auc_ci, read_labelled

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds must be 0 or >= 2, got {args.folds}")
    rows = read_labelled(args.labelled)
    if len({r.label for r in rows}) < 2:
        raise DataError(f"{args.labelled}: needs both coherent (1) and broken (0) rows")
    import torch

    from secondthoughts import coherence_fit, models
    from secondthoughts.metrics import Fluency

    model, tokenizer = models.load(args.lm, dtype=torch.float32)
    X = coherence_fit.features(Fluency(model, tokenizer, args.lm), [r.context for r in rows], [r.text for r in rows])
    y = [r.label for r in rows]
    info: dict[str, Any] = {"labelled": args.labelled}
    if args.folds:
        groups = [r.group or f"row {k}" for k, r in enumerate(rows)]
        a, lo, hi = auc_ci(coherence_fit.cross_validated(X, y, groups, folds=args.folds, l2=args.l2), y)
        info["cross_validated_auc"] = {"auc": round(a, 4), "ci95": [round(lo, 4), round(hi, 4)], "folds": args.folds,
                                       "groups": len(set(groups))}
        print(f"{args.folds}-fold cross-validated AUC (folds of whole stories): {a:.3f} [{lo:.3f}, {hi:.3f}]")
    fitted = coherence_fit.FittedCoherence.fit(X, y, l2=args.l2, lm=args.lm, **info)
    fitted.save(out, coherence_fit.model_card(fitted))
    print(f"fitted on {len(y)} texts ({sum(y)} coherent); wrote {out}/config.json and README.md")
    return 0


# ---------------------------------------------------------------- train


def _split(args: argparse.Namespace, seed: int) -> tuple[list[Example], list[Example], str]:
    train = list(read_examples(args.data))
    if args.dev:
        dev, dev_name = list(read_examples(args.dev)), args.dev
    elif args.dev_fraction > 0:
        parts = split_examples(train, {"dev": args.dev_fraction, "train": 1 - args.dev_fraction}, seed)
        train, dev, dev_name = parts["train"], parts["dev"], f"{args.dev_fraction:g} of {args.data}"
    else:
        dev, dev_name = [], "none"
    # Seeded samples by id hash: the same examples whatever the file order.
    if args.max_train is not None:
        train = shuffled(train, seed)[: args.max_train]
    if args.max_dev is not None:
        dev = shuffled(dev, seed)[: args.max_dev]
    if not train:
        raise ValueError(f"{args.data}: no training examples")
    return train, dev, dev_name


def _train(args: argparse.Namespace) -> int:
    from secondthoughts import reward

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before training, not after it
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.members < 1:
        raise ValueError(f"--members must be >= 1, got {args.members}")
    config = RewardConfig(**settings.flags_given(RewardConfig, args))
    train, dev, dev_name = _split(args, config.seed)
    kind = f"an ensemble of {args.members} {config.head} reward models" if args.members > 1 else f"a {config.head} reward model"
    print(f"training {kind} on {len(train)} examples from {args.data}; {len(dev)} held out ({dev_name})")
    data = {"train": args.data, "dev": dev_name, "max_train": args.max_train, "max_dev": args.max_dev}
    if args.members == 1:
        model, metrics = _train_one(config, train, dev, data)
        model.save(out, metrics)
        print(format_metrics(metrics["dev"]))
        print(f"wrote {out} (config.json, model/, metrics.json, README.md)")
        return 0

    # Members are kept beside the output as they finish, so a rerun of a killed command goes on.
    parts = out.with_name(f".{out.name}.members")
    members, member_metrics = [], []
    for k in range(args.members):
        member_config = replace(config, seed=config.seed + k)
        done = parts / f"member-{k}"
        if _finished(done, member_config, data, len(train)):
            print(f"member {k}: reusing {done}")
            members.append(reward.RewardModel.load(done))
            member_metrics.append(json.loads((done / "metrics.json").read_text(encoding="utf-8")))
            continue
        print(f"member {k}: seed {member_config.seed}")
        model, metrics = _train_one(member_config, train, [], data)  # scored on dev below, with the ensemble
        model.save(done, metrics)
        members.append(model)
        member_metrics.append(metrics)
    _save_ensemble(reward.RewardEnsemble(members), out, member_metrics, dev, data)
    shutil.rmtree(parts, ignore_errors=True)
    return 0


def _finished(folder: Path, config: RewardConfig, data: dict[str, Any], examples: int) -> bool:
    """Whether ``folder`` holds a member trained with exactly this config on the same data."""
    try:
        info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("config") == asdict(config) and metrics.get("data") == data and metrics.get("train", {}).get("examples") == examples


def _train_one(config: RewardConfig, train: list[Example], dev: list[Example], data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Train one model; its metrics (held-out ones when ``dev`` is given)."""
    from secondthoughts import reward_eval, reward_train

    t0 = time.perf_counter()
    model, stats = reward_train.train(config, train)
    train_s = time.perf_counter() - t0
    print(f"trained on {stats['texts']} texts ({stats['targets']} targets, {stats['sources']} sources, "
          f"{stats['hard_negatives']} hard negatives) in {train_s:.0f} s")
    metrics: dict[str, Any] = {"data": data, "train": stats, "dev": {"examples": 0}, "timing": {"train_s": round(train_s, 1)}}
    if dev:
        t0 = time.perf_counter()
        metrics["dev"] = reward_eval.evaluate_model(model, dev, hard_negatives=config.hard_negatives != 0, progress=True)
        metrics["timing"].update(_rate(metrics["dev"], time.perf_counter() - t0))
    return model, metrics


def _rate(m: dict[str, Any], seconds: float) -> dict[str, float]:
    n_texts = m["texts"] if "texts" in m else m["targets"] + m["sources"] + m["hard_negatives"]
    return {"eval_s": round(seconds, 1), "eval_texts_per_s": round(n_texts / seconds, 1)}


def _save_ensemble(ens: Any, out: Path, member_metrics: list[dict[str, Any]], dev: list[Example], data: dict[str, Any]) -> None:
    """Evaluate the members and the ensemble on ``dev`` (each member scores it once), then save."""
    import torch

    from secondthoughts import reward_eval

    timing: dict[str, float] = {}
    dev_metrics: dict[str, Any] = {"examples": 0}
    if dev:
        t0 = time.perf_counter()
        odds: list[torch.Tensor] = []

        def member(m: Any) -> Any:
            def fn(contexts: list[str], texts: list[str]) -> list[float]:
                odds.append(m.log_odds(contexts, texts, progress=True))
                return torch.sigmoid(odds[-1]).tolist()
            return fn

        # Every member on the same texts (all context sentences), so their rows compare.
        member_metrics = [{**mm, "dev": reward_eval.evaluate(member(m), dev)} for m, mm in zip(ens.members, member_metrics)]
        dev_metrics = reward_eval.evaluate(lambda c, t: torch.sigmoid(torch.stack(odds).mean(0)).tolist(), dev)
        timing = _rate(dev_metrics, time.perf_counter() - t0)
        for k, mm in enumerate(member_metrics):
            print(f"member {k}: pairwise accuracy {mm['dev']['pairwise_accuracy']:.4f}")
        print("ensemble:")
    metrics = {"data": data, "members": [mm.get("dev", {}) for mm in member_metrics], "dev": dev_metrics, "timing": timing}
    ens.save(out, metrics, member_metrics)
    print(format_metrics(dev_metrics))
    print(f"wrote {out} (config.json, member-0..{len(ens.members) - 1}/, metrics.json, README.md)")


def _ensemble(args: argparse.Namespace) -> int:
    from secondthoughts import reward

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    members, member_metrics = [], []
    for run in args.runs:
        if not isinstance(model := reward.load(run, views=args.views), reward.RewardModel):
            raise ValueError(f"{run}: an ensemble already; pass its member-K folders instead")
        members.append(model)
        path = Path(run) / "metrics.json"
        member_metrics.append(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
    dev = _held_out(args.dev, args.max_dev) if args.dev else []
    data = {"runs": list(args.runs), "dev": args.dev or "none", "max_dev": args.max_dev}
    _save_ensemble(reward.RewardEnsemble(members), out, member_metrics, dev, data)
    return 0


def format_metrics(m: dict[str, Any]) -> str:
    if not m.get("examples"):
        return "no held-out examples: nothing measured"
    if "auc" in m:  # a coherence scorer
        kinds = [k.removeprefix("accuracy_") for k in m if k.startswith("accuracy_")]
        return "\n".join([
            f"held out: {m['examples']} examples, {m['texts']} texts (complete ones against synthetic failures)",
            f"  accuracy (per text)      {m['accuracy']:.4f}   AUC {m['auc']:.4f}",
            *[f"    {k:<21}  {m['accuracy_' + k]:.4f}   mean score {m['mean_score_' + k]:.3f}" for k in kinds],
            f"  pairwise accuracy        {m['pairwise_accuracy']:.4f}   (target above a splice of its own chain)",
        ])
    n = m["targets"] + m["sources"] + m["hard_negatives"]
    lines = [
        f"held out: {m['examples']} examples, {n} texts",
        f"  accuracy (per text)      {m['accuracy']:.4f}",
        f"    targets (aligned)      {m['accuracy_target']:.4f}   mean reward {m['mean_reward_target']:.3f}",
        f"    sources (unaligned)    {m['accuracy_source']:.4f}   mean reward {m['mean_reward_source']:.3f}",
    ]
    if "accuracy_context" in m:
        lines.append(f"    context sentences      {m['accuracy_context']:.4f}   mean reward {m['mean_reward_context']:.3f}")
    lines.append(f"  pairwise accuracy        {m['pairwise_accuracy']:.4f}   (target above source)")
    if "echo_accuracy" in m:
        lines.append(f"  echo accuracy            {m['echo_accuracy']:.4f}   (target above every context sentence)")
    return "\n".join(lines)


# ---------------------------------------------------------------- score


def _held_out(path: str, max_dev: int | None) -> list[Example]:
    """Examples of ``path``, at most ``max_dev`` of them (a seeded sample)."""
    dev = list(read_examples(path))
    return dev if max_dev is None else shuffled(dev, 0)[:max_dev]


def _evaluate(args: argparse.Namespace) -> int:
    from secondthoughts import reward, reward_eval

    model = reward.load(args.model, views=args.views, dtype=args.dtype)
    dev = _held_out(args.data, args.max_dev)
    if not dev:
        raise ValueError(f"{args.data}: no examples")
    t0 = time.perf_counter()
    m = reward_eval.evaluate_model(model, dev, progress=True)
    views = sorted({m.config.views for m in (model.members if isinstance(model, reward.RewardEnsemble) else [model])})
    print(f"{args.model} (views: {', '.join(views)}; {model.precision}) on {args.data}")
    print(format_metrics(m))
    if args.output:
        write_json(args.output, {"model": args.model, "data": args.data, "views": views, "dtype": model.precision, **m, **_rate(m, time.perf_counter() - t0)})
    return 0


def write_json(path: str, obj: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_rows(path: str, context_field: str, text_field: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows of a JSONL with their context and text; a bad row raises DataError naming file and line.

    Rows come from ``data.jsonl_rows``, the package's one JSONL reader (BOM, .gz, blank lines).
    """
    rows, contexts, texts = [], [], []
    for line, row in jsonl_rows(Path(path)):
        if isinstance(row, RowError):
            raise DataError(row.message(path, line))
        for key in (context_field, text_field):
            if not isinstance(row.get(key), str):
                problem = "missing" if row.get(key) is None else f"expected a string, got {type(row[key]).__name__}"
                raise DataError(f"{path}:{line}: field {key!r}: {problem}")
        rows.append(row)
        contexts.append(row[context_field])
        texts.append(row[text_field])
    return rows, contexts, texts


def write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """JSONL written atomically (:func:`atomic.write_atomic`)."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _score(args: argparse.Namespace) -> int:
    from secondthoughts import reward

    rows, contexts, texts = read_rows(args.input, args.context_field, args.text_field)
    model = reward.load(args.model, dtype=args.dtype, batch_size=args.batch_size, views=args.views)
    t0 = time.perf_counter()
    scores = model.score(contexts, texts, progress=True)
    elapsed = time.perf_counter() - t0
    for row, s in zip(rows, scores):
        row[args.reward_field] = s
    write_rows(args.output, rows)
    mean = f", mean {statistics.fmean(scores):.3f}" if scores else ""
    rate = f" ({model.precision}, {len(scores) / elapsed:.0f} texts/s)" if scores and elapsed > 0 else f" ({model.precision})"
    print(f"scored {len(scores)} texts{mean}{rate}; wrote {args.output}")
    return 0
