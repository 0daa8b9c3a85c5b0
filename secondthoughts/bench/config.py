"""Benchmark configuration: the YAML files and ``--set`` overrides read into a checked
:class:`BenchConfig` (every trainer's settings built once, so that a bad key fails before any work,
naming its file and key)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from secondthoughts.chain_text import CHAIN_FORMATS

METHODS: tuple[str, ...] = ("direct", "dpo", "aem", "aem_rl")
METHOD_NAMES = {"direct": "direct fine-tuning", "dpo": "DPO (from direct)", "aem": "AEM (chains of edits)", "aem_rl": "AEM + RL"}
STARTS: tuple[str, ...] = ("aem", "base")
SCORERS: tuple[str, ...] = ("main", "second")
METRICS: tuple[str, ...] = ("alignment", "alignment_second", "coherence", "perplexity", "rouge_l", "bleu", "sari", "valid")
# metric -> per-example field of eval/outputs.jsonl, for paired comparisons
PER_EXAMPLE = {"alignment": "reward_output", "alignment_second": "reward2_output", "coherence": "coherence_output", "rouge_l": "rouge_l"}




class ConfigError(ValueError):
    """A bad benchmark config: the message names the file and the key."""


# ---------------------------------------------------------------- configuration


@dataclass
class DatasetSpec:
    name: str
    format: str
    path: str
    read: dict[str, Any] = field(default_factory=dict)  # read_dataset keyword arguments
    train: int = 1000  # training pairs of every method
    test: int = 200  # held-out test pairs, the same for every cell of the dataset
    reward_train: int = 0  # pairs the two scorers split in halves (0: the training pairs)


@dataclass
class TransferSpec:
    source: str = "moral_stories"
    target: str = "ethics_deontology"
    ks: list[int] = field(default_factory=lambda: [0, 16, 64, 256])
    min_examples: int = 256  # each run sees at least this many examples: epochs >= min_examples / k
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for the k-shot runs


@dataclass
class EvalSettings:
    batch_size: int = 8
    bootstrap: int = 1000
    max_new_tokens: int = 0  # 0: Realigner's default budget
    coherence: str = ""  # a coherence scorer run (reward train --objective coherence): every cell's coherence column


@dataclass
class Speeds:
    """Throughputs the time estimates assume (measured on 2 shared CPU cores, embedded model)."""

    train_tokens_per_s: float = 150.0
    generate_tokens_per_s: float = 60.0
    reward_texts_per_s: float = 30.0


@dataclass
class BenchConfig:
    datasets: dict[str, DatasetSpec]
    model: str = "embedded"
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    scorer_seeds: list[int] = field(default_factory=lambda: [0, 1])
    train: dict[str, Any] = field(default_factory=dict)
    # The chains AEM cells train on (sft.TrainConfig.chain_format): kept out of `train` so that it
    # enters only the fingerprints of the cells it changes.
    chain_format: str = "anchored"
    dpo: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    transfer: TransferSpec | None = None
    evaluate: EvalSettings = field(default_factory=EvalSettings)
    speeds: Speeds = field(default_factory=Speeds)
    sources: list[str] = field(default_factory=list)  # the YAML files read, for messages and the report

    def where(self, key: str) -> str:
        return f"{' + '.join(self.sources) or '<config>'}: {key}"


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "seeds=[0,1]"]`` -> a nested mapping; values are read as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is already set to a value")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_settings(cfg: BenchConfig) -> None:
    """Build each trainer's config once, so a bad key fails now, naming file and key."""
    from secondthoughts.dpo import DPOSettings
    from secondthoughts.refine import RefineConfig
    from secondthoughts.reward import RewardConfig
    from secondthoughts.sft import TrainConfig

    checks: list[tuple[str, Callable[[], Any]]] = [
        ("train", lambda: TrainConfig.from_dict(cfg.train)),
        ("dpo", lambda: DPOSettings.from_dict(cfg.dpo)),
        ("refine", lambda: RefineConfig.from_dict(cfg.refine)),
        ("reward", lambda: _build(RewardConfig, cfg.reward, cfg.where("reward"))),
    ]
    if cfg.transfer is not None:
        checks.append(("transfer.train", lambda: TrainConfig.from_dict({**cfg.train, **cfg.transfer.train})))  # type: ignore[union-attr]
    for key, check in checks:
        try:
            check()
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{cfg.where(key)}: {e}") from None
    for key in ("data", "out", "model", "mode", "seed"):
        if key in cfg.train:
            raise ConfigError(f"{cfg.where('train.' + key)}: set by the harness per cell; remove it")
    if "chain_format" in cfg.train or (cfg.transfer is not None and "chain_format" in cfg.transfer.train):
        raise ConfigError(f"{cfg.where('train.chain_format')}: set it at the top level (chain_format), where it reaches the AEM cells only")
    for key in ("policy", "reward", "data", "out", "seed"):
        if key in cfg.refine:
            raise ConfigError(f"{cfg.where('refine.' + key)}: set by the harness per cell; remove it")
    if "seed" in cfg.reward:
        raise ConfigError(f"{cfg.where('reward.seed')}: the scorers' seeds are scorer_seeds")


def config_from_dict(d: Mapping[str, Any], sources: Sequence[str] = ()) -> BenchConfig:
    cfg_where = " + ".join(sources) or "<config>"
    d = dict(d)
    raw_sets = d.pop("datasets", None)
    if not isinstance(raw_sets, Mapping) or not raw_sets:
        raise ConfigError(f"{cfg_where}: datasets: at least one dataset is needed")
    datasets = {}
    for name, spec in raw_sets.items():
        if spec is None or (isinstance(spec, Mapping) and spec.get("enabled") is False):
            continue  # `enabled: false` keeps an optional dataset in the file without running it
        spec = {k: v for k, v in dict(spec).items() if k != "enabled"}
        datasets[name] = _build(DatasetSpec, {"name": name, **spec}, f"{cfg_where}: datasets.{name}")
    transfer = d.pop("transfer", None)
    if transfer is not None and transfer.get("enabled", True) is not False:
        transfer = _build(TransferSpec, {k: v for k, v in transfer.items() if k != "enabled"}, f"{cfg_where}: transfer")
    else:
        transfer = None
    ev = _build(EvalSettings, d.pop("evaluate", {}) or {}, f"{cfg_where}: evaluate")
    speeds = _build(Speeds, d.pop("speeds", {}) or {}, f"{cfg_where}: speeds")
    cfg = _build(BenchConfig, {**d, "datasets": datasets, "transfer": transfer, "evaluate": ev, "speeds": speeds, "sources": list(sources)}, cfg_where)
    _validate(cfg)
    return cfg


def _validate(cfg: BenchConfig) -> None:
    if not cfg.datasets:
        raise ConfigError(f"{cfg.where('datasets')}: every dataset is disabled")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"{cfg.where('methods')}: unknown {bad}; choose from {list(METHODS)}")
    if "dpo" in cfg.methods and "direct" not in cfg.methods:
        raise ConfigError(f"{cfg.where('methods')}: dpo starts from the direct model: add direct")
    if "aem_rl" in cfg.methods and "aem" not in cfg.methods:
        raise ConfigError(f"{cfg.where('methods')}: aem_rl refines the aem model: add aem")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or not all(isinstance(s, int) for s in cfg.seeds):
        raise ConfigError(f"{cfg.where('seeds')}: a list of distinct integers, got {cfg.seeds!r}")
    if len(cfg.scorer_seeds) != 2 or cfg.scorer_seeds[0] == cfg.scorer_seeds[1]:
        raise ConfigError(f"{cfg.where('scorer_seeds')}: two different seeds (main, second), got {cfg.scorer_seeds!r}")
    for name, spec in cfg.datasets.items():
        for key in ("train", "test"):
            if not isinstance(getattr(spec, key), int) or getattr(spec, key) < 1:
                raise ConfigError(f"{cfg.where(f'datasets.{name}.{key}')}: a positive number of pairs")
        if spec.reward_train and spec.reward_train < 2:
            raise ConfigError(f"{cfg.where(f'datasets.{name}.reward_train')}: at least 2 pairs (two halves)")
    t = cfg.transfer
    if t is not None:
        for key in ("source", "target"):
            if getattr(t, key) not in cfg.datasets:
                raise ConfigError(f"{cfg.where(f'transfer.{key}')}: {getattr(t, key)!r} is not one of the datasets {sorted(cfg.datasets)}")
        if "aem" not in cfg.methods:
            raise ConfigError(f"{cfg.where('transfer')}: transfer starts from the source's aem model: add aem to methods")
        if not t.ks or any(not isinstance(k, int) or k < 0 for k in t.ks) or len(set(t.ks)) != len(t.ks):
            raise ConfigError(f"{cfg.where('transfer.ks')}: distinct non-negative integers, got {t.ks!r}")
    if cfg.chain_format not in CHAIN_FORMATS:
        raise ConfigError(f"{cfg.where('chain_format')}: one of {list(CHAIN_FORMATS)}, got {cfg.chain_format!r}")
    if cfg.evaluate.batch_size < 1 or cfg.evaluate.bootstrap < 0:
        raise ConfigError(f"{cfg.where('evaluate')}: batch_size >= 1 and bootstrap >= 0")
    _check_settings(cfg)


def load_config(paths: Sequence[str | os.PathLike[str]], sets: Sequence[str] = ()) -> BenchConfig:
    """Read one or more YAML files (later ones override earlier ones, key by key), then the
    ``--set key=value`` overrides."""
    import yaml

    merged: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                d = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        merged = deep_merge(merged, d)
    sources = [str(p) for p in paths] + ([f"--set {' '.join(sets)}"] if sets else [])
    return config_from_dict(deep_merge(merged, parse_set(sets)), sources)

