"""The benchmark harness: the paper's claims as a grid of cached cells.

``secondthoughts bench --config benchmarks/paper.yaml --out bench/`` trains and evaluates

- methods x datasets x seeds: ``direct`` (``sft.train`` mode direct), ``dpo`` (TRL's DPOTrainer
  from the direct model of the same cell, see :mod:`secondthoughts.dpo`), ``aem`` (``sft.train``
  mode coe) and ``aem_rl`` (``refine`` from the aem cell's run against the main scorer);
- few-shot transfer: the source dataset's AEM model (merged) and the base model, each trained on
  k examples of the target dataset, k in ``transfer.ks`` (k = 0: no training);
- two scorers per dataset (``reward.train``): ``main`` (seed ``scorer_seeds[0]``, first half of the
  reward pairs; the RL reward) and ``second`` (seed ``scorer_seeds[1]``, the other half), so that
  RL is never judged only by the function it optimized.

Every cell is a folder under ``--out`` that is finished when its ``cell.json`` exists with the
fingerprint of its settings (which include its dependencies' fingerprints): a finished cell is
skipped, a changed one ("stale") recomputed. Inside a cell, ``trained.json`` marks the training
phase done and ``eval/`` (written atomically by ``evaluate.write_report``) the evaluation; an
interrupted training resumes through the trainers' own checkpoints (``sft``, ``refine``) or
restarts (DPO, scorers). A killed session thus loses at most the cell in progress.

After each cell, ``results.json``, ``results.md`` and the plots are rewritten from the finished
cells alone (:func:`collect`, :func:`render_markdown`): the markdown is a function of the JSON.
Claims are judged on paired bootstrap intervals of per-example differences (same test examples,
seeds pooled); see :func:`verdict`.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts.data import (
    Example,
    few_shot,
    read_dataset,
    split_examples,
    write_examples,
)
from secondthoughts.edits import CHAIN_FORMATS
from secondthoughts.plots import save_png
from secondthoughts.runs import find_checkpoint, write_atomic, write_dir

METHODS: tuple[str, ...] = ("direct", "dpo", "aem", "aem_rl")
METHOD_NAMES = {"direct": "direct fine-tuning", "dpo": "DPO (from direct)", "aem": "AEM (chains of edits)", "aem_rl": "AEM + RL"}
STARTS: tuple[str, ...] = ("aem", "base")
SCORERS: tuple[str, ...] = ("main", "second")
METRICS: tuple[str, ...] = ("alignment", "alignment_second", "coherence", "perplexity", "rouge_l", "bleu", "sari", "valid")
# metric -> per-example field of eval/outputs.jsonl, for paired comparisons
PER_EXAMPLE = {"alignment": "reward_output", "alignment_second": "reward2_output", "coherence": "coherence_output", "rouge_l": "rouge_l"}
CELL_FILE, TRAINED_FILE = "cell.json", "trained.json"


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


# ---------------------------------------------------------------- data


@dataclass
class Split:
    """One dataset's parts, fixed by ``data_seed``: the same test pairs for every cell."""

    train: list[Example]
    test: list[Example]
    reward: dict[str, list[Example]]  # "main" / "second": the two halves of the reward pairs
    pool: list[Example]  # every non-test example, in the seeded order (few-shot draws from it)


def split_dataset(cfg: BenchConfig, spec: DatasetSpec) -> Split:
    from secondthoughts.data import DataError

    path = Path(spec.path)
    if not path.exists():
        raise ConfigError(f"{cfg.where(f'datasets.{spec.name}.path')}: {path} not found (the shared data: see ../shared/data/README.md)")
    try:
        examples = read_dataset(spec.format, path, **spec.read).examples
    except TypeError as e:
        raise ConfigError(f"{cfg.where(f'datasets.{spec.name}.read')}: {e}") from None
    except DataError as e:
        raise ConfigError(f"{cfg.where(f'datasets.{spec.name}')}: {e}") from None
    need = spec.test + max(spec.train, spec.reward_train)
    if len(examples) < need:
        raise ConfigError(f"{cfg.where(f'datasets.{spec.name}')}: {path} gives {len(examples)} examples, the sizes need {need}")
    parts = split_examples(examples, {"test": spec.test, "pool": None}, cfg.data_seed)
    pool = parts["pool"]
    reward = pool[: spec.reward_train or spec.train]
    half = len(reward) // 2
    return Split(pool[: spec.train], parts["test"], {"main": reward[:half], "second": reward[half:]}, pool)


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One unit of work and its folder ``--out/key``."""

    key: str
    kind: str  # scorer | method | merge | transfer
    dataset: str
    method: str = ""  # a METHODS name for kind "method"
    seed: int | None = None
    role: str = ""  # scorer: main | second
    start: str = ""  # transfer: aem | base
    k: int | None = None  # transfer: training examples
    deps: tuple[str, ...] = ()


def scorer_key(dataset: str, role: str) -> str:
    return f"scorers/{dataset}/{role}"


def method_key(seed: int, dataset: str, method: str) -> str:
    return f"s{seed}/{dataset}/{method}"


def transfer_key(seed: int, start: str, k: int) -> str:
    return f"s{seed}/transfer/from_{start}-k{k}"


def plan(cfg: BenchConfig) -> list[Cell]:
    """Every cell, dependencies first."""
    cells = [Cell(scorer_key(d, r), "scorer", d, role=r) for d in cfg.datasets for r in SCORERS]
    deps_of = {"direct": (), "dpo": ("direct",), "aem": (), "aem_rl": ("aem",)}
    for seed in cfg.seeds:
        for d in cfg.datasets:
            for m in (m for m in METHODS if m in cfg.methods):
                deps = tuple(method_key(seed, d, x) for x in deps_of[m]) + (scorer_key(d, "main"), scorer_key(d, "second"))
                cells.append(Cell(method_key(seed, d, m), "method", d, m, seed, deps=deps))
        t = cfg.transfer
        if t is not None:
            scorers = (scorer_key(t.target, "main"), scorer_key(t.target, "second"))
            merged = f"s{seed}/transfer/merged_aem"
            cells.append(Cell(merged, "merge", t.source, seed=seed, deps=(method_key(seed, t.source, "aem"),)))
            for k in sorted(t.ks):
                for start in STARTS:
                    dep = (method_key(seed, t.source, "aem"),) if start == "aem" and k == 0 else (merged,) if start == "aem" else ()
                    cells.append(Cell(transfer_key(seed, start, k), "transfer", t.target, seed=seed, start=start, k=k, deps=dep + scorers))
    return cells


def transfer_epochs(cfg: BenchConfig, k: int) -> float:
    """Few examples need more passes: at least ``min_examples`` example presentations."""
    assert cfg.transfer is not None
    base = float({**cfg.train, **cfg.transfer.train}.get("epochs", 3.0))
    return max(base, math.ceil(cfg.transfer.min_examples / k)) if k else 0.0


def cell_settings(cfg: BenchConfig, cell: Cell) -> dict[str, Any]:
    """Everything the cell's result depends on (its dependencies enter through their fingerprints)."""
    spec = asdict(cfg.datasets[cell.dataset])
    data = {"dataset": spec, "data_seed": cfg.data_seed}
    if cell.kind == "scorer":
        # Scorers saw their context only before views existed: "context" adds nothing, so that caches
        # made then keep their fingerprints; the default (context+alone) enters when not set.
        from secondthoughts.reward import RewardConfig

        reward = {k: v for k, v in cfg.reward.items() if k != "views"}
        views = cfg.reward.get("views", RewardConfig.views)  # the dataclass default
        return {**data, "reward": reward, **({"views": views} if views != "context" else {}), "seed": cfg.scorer_seeds[SCORERS.index(cell.role)],
                "role": cell.role}  # fmt: skip
    evaluation = asdict(cfg.evaluate)
    common = {**data, "model": cfg.model, "seed": cell.seed, "evaluate": evaluation}
    # Positional chains were the only format before the option: they add nothing, so that caches
    # made then keep their fingerprints.
    chains = {"chain_format": cfg.chain_format} if cfg.chain_format != "positional" else {}
    if cell.kind == "method":
        extra: dict[str, Any] = {"train": cfg.train, **(chains if cell.method in ("aem", "aem_rl") else {})}
        if cell.method == "dpo":
            extra["dpo"] = cfg.dpo
        if cell.method == "aem_rl":
            extra["refine"] = cfg.refine
        return {**common, "method": cell.method, **extra}
    assert cfg.transfer is not None
    if cell.kind == "merge":
        return {"model": cfg.model, "seed": cell.seed, "source": cfg.transfer.source}
    return {
        **common, "start": cell.start, "k": cell.k, "train": {**cfg.train, **cfg.transfer.train}, "min_examples": cfg.transfer.min_examples, **chains,
    }  # fmt: skip


def fingerprints(cfg: BenchConfig, cells: Sequence[Cell]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in cells:  # dependencies first (plan order)
        blob = json.dumps({"settings": cell_settings(cfg, c), "deps": [out[d] for d in c.deps]}, sort_keys=True, default=str)
        out[c.key] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def cell_status(out: Path, cell: Cell, fingerprint: str) -> str:
    """done | stale (finished with other settings) | partial | todo."""
    folder = out / cell.key
    marker = folder / CELL_FILE
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "partial"
        return "done" if saved.get("fingerprint") == fingerprint else "stale"
    return "partial" if folder.is_dir() and any(folder.iterdir()) else "todo"


def select(cells: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
    """Cells whose key matches a glob in ``patterns``, with everything they depend on."""
    if not patterns:
        return list(cells)
    by_key = {c.key: c for c in cells}
    wanted: set[str] = set()
    stack = [c.key for c in cells if any(fnmatch.fnmatch(c.key, p) for p in patterns)]
    if not stack:
        raise ConfigError(f"--only {list(patterns)} matches no cell; cells look like {cells[-1].key}")
    while stack:
        key = stack.pop()
        if key not in wanted:
            wanted.add(key)
            stack.extend(by_key[key].deps)
    return [c for c in cells if c.key in wanted]


# ---------------------------------------------------------------- time estimates


def _tokens(text: str) -> float:
    return len(text) / 4.0 + 1  # ~4 characters per token for English BPE vocabularies


@dataclass
class DataStats:
    """Mean token counts of a dataset's examples (estimated from characters)."""

    context: float
    source: float
    target: float
    chain: float  # compact chain of edits
    chains_per_pair: float  # distinct chains under the augmentation cost sets


def data_stats(examples: Sequence[Example], cost_sets: Sequence[Sequence[float]] | None = None) -> DataStats:
    from secondthoughts.edits import (
        DEFAULT_COST_SETS,
        augment_chains,
        render_compact,
        tokenize,
    )

    sample = list(examples[:200])
    sets = [tuple(c) for c in (cost_sets or DEFAULT_COST_SETS)]
    chains = [augment_chains(tokenize(e.source), tokenize(e.target), sets) for e in sample]
    mean = lambda xs: float(np.mean(list(xs))) if sample else 0.0
    return DataStats(
        mean(_tokens(e.context) for e in sample), mean(_tokens(e.source) for e in sample), mean(_tokens(e.target) for e in sample),
        mean(_tokens(render_compact(c[0][1])) * 1.6 for c in chains if c),  # markers and digits: ~1.6x denser than prose
        mean(len(c) for c in chains),
    )  # fmt: skip


def estimate_s(cfg: BenchConfig, cell: Cell, stats: Mapping[str, DataStats]) -> float:
    """Seconds the cell should take at ``cfg.speeds`` (training, generation, scoring, ~30 s of loading)."""
    sp, spec = cfg.speeds, cfg.datasets[cell.dataset]
    st = stats[cell.dataset]
    train = {**cfg.train}
    epochs = float(train.get("epochs", 3.0))
    direct_seq, coe_seq = st.context + st.source + st.target, st.context + st.source + st.chain + st.target
    evaluate = spec.test * (st.target + 4) / sp.generate_tokens_per_s + 30

    def coe_eval() -> float:
        return spec.test * (st.chain + 4) / sp.generate_tokens_per_s + 30

    if cell.kind == "scorer":
        reward_epochs = int(cfg.reward.get("epochs", 1))
        pairs = (spec.reward_train or spec.train) / 2
        return pairs * 3 * reward_epochs / sp.reward_texts_per_s + 20
    if cell.kind == "merge":
        return 30.0
    if cell.kind == "transfer":
        k = cell.k or 0
        seconds = k * transfer_epochs(cfg, k) * st.chains_per_pair * coe_seq / sp.train_tokens_per_s if k else 5.0
        return seconds + coe_eval()
    n = spec.train
    if cell.method == "direct":
        return n * epochs * direct_seq / sp.train_tokens_per_s + evaluate
    if cell.method == "dpo":
        dpo_epochs = float(cfg.dpo.get("epochs", 1.0))
        # policy forward + backward on chosen and rejected, reference forward on both: ~8/3 of SFT per pair
        return n * dpo_epochs * 2 * direct_seq * (4 / 3) / sp.train_tokens_per_s + evaluate
    if cell.method == "aem":
        return n * epochs * st.chains_per_pair * coe_seq / sp.train_tokens_per_s + coe_eval()
    from secondthoughts.refine import RefineConfig

    rc = RefineConfig.from_dict(cfg.refine)
    samples = rc.steps * rc.prompts_per_step * (rc.k + (1 if rc.baseline == "greedy" else 0))
    generate = samples * (st.chain + 4) / sp.generate_tokens_per_s
    update = rc.steps * rc.prompts_per_step * (rc.k + 2) * coe_seq * rc.ppo_epochs / sp.train_tokens_per_s
    return generate + update + coe_eval()


def fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# ---------------------------------------------------------------- running cells


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


class Bench:
    """Runs the cells of one config into ``out``; see the module docstring."""

    def __init__(self, cfg: BenchConfig, out: str | os.PathLike[str], *, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out).resolve(), progress, log
        self.cells = plan(cfg)
        self.fp = fingerprints(cfg, self.cells)
        self._splits: dict[str, Split] = {}
        self._stats: dict[str, DataStats] = {}

    # ---- data

    def split(self, dataset: str) -> Split:
        if dataset not in self._splits:
            self._splits[dataset] = split_dataset(self.cfg, self.cfg.datasets[dataset])
        return self._splits[dataset]

    def stats(self) -> dict[str, DataStats]:
        for d in self.cfg.datasets:
            if d not in self._stats:
                cost_sets = self.cfg.train.get("cost_sets")
                self._stats[d] = data_stats(self.split(d).train, cost_sets)
        return self._stats

    def data_file(self, dataset: str, part: str, examples: Sequence[Example]) -> Path:
        """The examples as JSONL under ``out/data`` (what the trainers read); rewritten only when changed."""
        path = self.out / "data" / dataset / f"{part}.jsonl"
        text = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_examples(path, examples)
        return path

    # ---- status and planning

    def status(self, cells: Sequence[Cell] | None = None) -> list[tuple[Cell, str, float]]:
        """(cell, status, seconds): recorded wall time for done cells, else the estimate."""
        stats = self.stats()
        rows = []
        for c in cells or self.cells:
            st = cell_status(self.out, c, self.fp[c.key])
            secs = float(json.loads((self.out / c.key / CELL_FILE).read_text()).get("wall_s", 0.0)) if st == "done" else estimate_s(self.cfg, c, stats)
            rows.append((c, st, secs))
        return rows

    def dry_run(self, patterns: Sequence[str] = ()) -> str:
        rows = self.status(select(self.cells, patterns))
        width = max(len(c.key) for c, _, _ in rows)
        lines = [f"{'cell':<{width}}  {'status':<8} {'time':>8}"]
        for c, st, secs in rows:
            lines.append(f"{c.key:<{width}}  {st:<8} {fmt_duration(secs):>8}{'' if st == 'done' else ' (est.)'}")
        left = sum(s for _, st, s in rows if st != "done")
        counts = {k: sum(st == k for _, st, _ in rows) for k in ("done", "partial", "stale", "todo")}
        lines.append(f"{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) +
                     f"; estimated {fmt_duration(left)} left at {self.cfg.speeds.train_tokens_per_s:g} training tokens/s, "
                     f"{self.cfg.speeds.generate_tokens_per_s:g} generated tokens/s")  # fmt: skip
        return "\n".join(lines)

    def run(self, patterns: Sequence[str] = ()) -> dict[str, Any]:
        """Compute every cell that is not done, rewriting the results after each; returns them."""
        from tqdm.auto import tqdm

        rows = self.status(select(self.cells, patterns))
        todo = [(c, st, est) for c, st, est in rows if st != "done"]
        self.log(f"bench: {len(rows)} cells, {len(rows) - len(todo)} done, {len(todo)} to compute (estimated {fmt_duration(sum(e for *_, e in todo))})")
        spent, estimated = 0.0, 0.0
        bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not self.progress, dynamic_ncols=True, position=0)
        for i, (cell, st, est) in enumerate(todo):
            # Remaining estimate, scaled by how this session's cells compared with their estimates.
            ratio = spent / estimated if estimated else 1.0
            eta = ratio * sum(e for *_, e in todo[i:])
            self.log(f"[{i + 1}/{len(todo)}] {cell.key} ({st}): estimated {fmt_duration(ratio * est)}; ETA for the rest {fmt_duration(eta)}")
            t0 = time.perf_counter()
            self.run_cell(cell, st)
            spent += time.perf_counter() - t0
            estimated += est
            bar.update(1)
            self.write_results()
        bar.close()
        return self.write_results()

    def run_cell(self, cell: Cell, status: str) -> None:
        folder = self.out / cell.key
        if status == "stale":  # settings changed: start the cell over
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for dep in cell.deps:
            if cell_status(self.out, next(c for c in self.cells if c.key == dep), self.fp[dep]) != "done":
                raise RuntimeError(f"{cell.key}: its dependency {dep} is not finished")
        t0 = time.perf_counter()
        previous = _trained_s(folder)
        runner = {"scorer": self._scorer, "method": self._method, "merge": self._merge, "transfer": self._transfer}[cell.kind]
        metrics = runner(cell, folder)
        record = {
            "key": cell.key, "fingerprint": self.fp[cell.key], **{k: v for k, v in asdict(cell).items() if k != "key"},
            "wall_s": previous + time.perf_counter() - t0 if previous else time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "metrics": metrics, "settings": cell_settings(self.cfg, cell),
        }  # fmt: skip
        _write_json(folder / CELL_FILE, record)

    # ---- the kinds of cell

    def _scorer(self, cell: Cell, folder: Path) -> dict[str, Any]:
        from secondthoughts import reward

        split = self.split(cell.dataset)
        seed = self.cfg.scorer_seeds[SCORERS.index(cell.role)]
        examples = split.reward[cell.role]
        config = reward.RewardConfig(**{**self.cfg.reward, "seed": seed})
        model, stats = reward.train(config, examples, progress=self.progress)
        test = reward.evaluate(model, split.test)
        model.save(folder / "run", {"train": stats, "test": test})
        return {"seed": seed, "pairs": len(examples), "test": test}

    def _method(self, cell: Cell, folder: Path) -> dict[str, Any]:
        assert cell.seed is not None
        split = self.split(cell.dataset)
        train_file = self.data_file(cell.dataset, "train", split.train)
        run = folder / "run"
        if not (folder / TRAINED_FILE).is_file():
            t0 = time.perf_counter()
            if cell.method in ("direct", "aem"):
                chains = {} if cell.method == "direct" else {"mode": "coe", "chain_format": self.cfg.chain_format}
                self._sft(run, {**self.cfg.train, "data": str(train_file), "mode": "direct", **chains, "model": self.cfg.model, "seed": cell.seed})
            elif cell.method == "dpo":
                from secondthoughts.dpo import DPOSettings, train_dpo

                direct = self.out / method_key(cell.seed, cell.dataset, "direct") / "run"
                train_dpo(direct, split.train, run, DPOSettings.from_dict(self.cfg.dpo), seed=cell.seed, progress=self.progress)
            else:
                self._refine(cell, run, train_file)
            _write_json(folder / TRAINED_FILE, {"wall_s": time.perf_counter() - t0})
        return self._evaluate(run, cell.dataset, folder)

    def _sft(self, run: Path, settings: dict[str, Any]) -> None:
        from secondthoughts.sft import TrainConfig, train

        config = TrainConfig.from_dict({**settings, "out": str(run), "progress": self.progress})
        resume = (run / "config.json").is_file() and find_checkpoint(run) is not None
        if resume:
            try:
                train(config, resume=True)
                return
            except ValueError as e:  # settings differ from the interrupted run's: start over
                self.log(f"  {run}: cannot resume ({e}); starting over")
        shutil.rmtree(run, ignore_errors=True)
        train(config)

    def _refine(self, cell: Cell, run: Path, train_file: Path) -> None:
        from secondthoughts.refine import RefineConfig, refine

        assert cell.seed is not None
        config = RefineConfig.from_dict({
            **self.cfg.refine, "policy": str(self.out / method_key(cell.seed, cell.dataset, "aem") / "run"),
            "reward": str(self.out / scorer_key(cell.dataset, "main") / "run"), "data": str(train_file),
            "out": str(run), "seed": cell.seed, "progress": self.progress,
        })  # fmt: skip
        if (run / "config.json").is_file() and find_checkpoint(run) is not None:
            try:
                refine(config, resume=True)
                return
            except ValueError as e:
                self.log(f"  {run}: cannot resume ({e}); starting over")
        shutil.rmtree(run, ignore_errors=True)
        refine(config)

    def _merge(self, cell: Cell, folder: Path) -> dict[str, Any]:
        """The source dataset's AEM model with its adapter merged: the start of the transfer runs."""
        from secondthoughts import models

        assert cell.seed is not None and self.cfg.transfer is not None
        aem = self.out / method_key(cell.seed, self.cfg.transfer.source, "aem") / "run"
        model, tok = models.load(str(aem), device="cpu")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()

        def write(p: Path) -> None:
            model.save_pretrained(p, safe_serialization=True)
            tok.save_pretrained(p)

        write_dir(folder / "model", write)
        return {"from": str(aem)}

    def _transfer(self, cell: Cell, folder: Path) -> dict[str, Any]:
        assert cell.seed is not None and cell.k is not None and self.cfg.transfer is not None
        t = self.cfg.transfer
        run = folder / "run"
        if cell.k == 0 and cell.start == "aem":
            run = self.out / method_key(cell.seed, t.source, "aem") / "run"  # no training: the source model as is
        elif not (folder / TRAINED_FILE).is_file():
            t0 = time.perf_counter()
            start = str(self.out / f"s{cell.seed}/transfer/merged_aem" / "model") if cell.start == "aem" else self.cfg.model
            settings = {**self.cfg.train, **t.train, "mode": "coe", "chain_format": self.cfg.chain_format, "model": start, "seed": cell.seed}
            if cell.k == 0:
                self._untrained(run, settings)
            else:
                shots = few_shot(self.split(t.target).pool, cell.k, cell.seed)
                data = self.data_file(t.target, f"fewshot-s{cell.seed}-k{cell.k}", shots)
                self._sft(run, {**settings, "data": str(data), "eval_fraction": 0.0, "epochs": transfer_epochs(self.cfg, cell.k), "max_steps": 0})
            _write_json(folder / TRAINED_FILE, {"wall_s": time.perf_counter() - t0})
        return self._evaluate(run, t.target, folder)

    def _untrained(self, run: Path, settings: dict[str, Any]) -> None:
        """k = 0 from the base model: the base with the edit tokens and a zero LoRA, as a run folder."""
        from secondthoughts.sft import TrainConfig, build_model, save_model

        config = TrainConfig.from_dict({**settings, "out": str(run), "progress": False})
        model, tok, _ = build_model(config)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        save_model(model, tok, run / "model", config.model)
        (run / "config.json").write_text(json.dumps({"train": asdict(config), "note": "untrained: k = 0"}, indent=2), encoding="utf-8")
        (run / "metrics.jsonl").write_text("", encoding="utf-8")

    # ---- evaluation

    def _evaluate(self, run: Path, dataset: str, folder: Path) -> dict[str, Any]:
        """Re-align the test pairs, score with both scorers, write ``eval/``; the cell's summary."""
        ev_dir = folder / "eval"
        if not (ev_dir / "metrics.json").is_file():
            from secondthoughts.evaluate import evaluate_run, write_report

            e = self.cfg.evaluate
            test = self.split(dataset).test
            gen = {"max_new_tokens": e.max_new_tokens} if e.max_new_tokens else {}
            main_run, second_run = (self.out / scorer_key(dataset, r) / "run" for r in SCORERS)
            ev = evaluate_run(run, test, reward_run=main_run, second_reward_run=str(second_run), coherence_run=e.coherence or None,
                              base_lm=self.cfg.model, batch_size=e.batch_size, resamples=e.bootstrap,
                              seed=0, progress=self.progress, info={"data": f"{dataset} test ({len(test)} pairs)"}, **gen)  # fmt: skip
            ev.metrics["alignment_second"]["scorer"] = str(second_run)
            write_report(ev, ev_dir, overwrite=True)
        return summarize_eval(json.loads((ev_dir / "metrics.json").read_text(encoding="utf-8")))

    # ---- results

    def write_results(self) -> dict[str, Any]:
        results = collect(self.cfg, self.out, self.cells, self.fp)
        _write_json(self.out / "results.json", results)
        plots = write_plots(results, self.out)
        (self.out / "results.md").write_text(render_markdown(results, plots), encoding="utf-8")
        return results


def _trained_s(folder: Path) -> float:
    try:
        return float(json.loads((folder / TRAINED_FILE).read_text())["wall_s"])
    except (OSError, ValueError, KeyError):
        return 0.0


# ---------------------------------------------------------------- summaries and statistics


def _interval(x: Any) -> dict[str, Any] | None:
    """``{"mean", "ci95"}`` from an evaluate.py field (headline or mean_ci), None when missing."""
    if not isinstance(x, dict) or "missing" in x:
        return None
    value = next((x[k] for k in ("value", "mean", "corpus") if k in x), None)
    return None if value is None else {"mean": value, "ci95": x.get("ci95")}


def summarize_eval(m: Mapping[str, Any]) -> dict[str, Any]:
    """The cell's metrics (mean and 95% interval each) from an eval ``metrics.json``."""
    h = m["headline"]
    second = m.get("alignment_second", {})
    first = m.get("alignment", {})
    coh = m.get("coherence") or {}
    coh = {} if "missing" in coh else coh
    return {
        "alignment": _interval(h["alignment"]),
        "alignment_second": _interval(second.get("outputs")),
        "coherence": _interval(coh.get("outputs")),
        "perplexity": _interval(h["perplexity"]),
        "rouge_l": _interval(h["rouge_l"]),
        "bleu": _interval(h["bleu"]),
        "sari": _interval(h["sari"]),
        "valid": _interval(h["valid"]),
        "reference": {
            "source": {"alignment": _interval(first.get("sources")), "alignment_second": _interval(second.get("sources")), "coherence": _interval(coh.get("sources"))},
            "target": {"alignment": _interval(first.get("targets")), "alignment_second": _interval(second.get("targets")), "coherence": _interval(coh.get("targets"))},
        },
        "examples": m["info"]["examples"],
        "mode": m["info"]["mode"],
    }


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """Mean of ``a[i] - b[i]`` over the keys both have, with a bootstrap 95% interval."""
    from secondthoughts.evaluate import bootstrap_ci

    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    ci = bootstrap_ci(len(d), lambda i: float(d[i].mean()), resamples=resamples, seed=seed)
    return {"mean": float(d.mean()), "ci95": ci, "n": len(d)}


def outcome(diff: Mapping[str, Any] | None) -> str:
    """``better`` / ``worse`` when the 95% interval of the difference excludes 0, else ``tie``;
    ``missing`` when there is no interval."""
    if not diff or not diff.get("ci95"):
        return "missing"
    lo, hi = diff["ci95"]
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


def verdict(outcomes: Sequence[str]) -> str:
    """A claim over several comparisons (datasets x scorers, or k x scorers):

    - ``confirmed``: every comparison is ``better`` (so both scorers agree, everywhere);
    - ``refuted``: at least one is ``worse`` and none ``better``;
    - ``inconclusive``: anything else (ties, mixed results);
    - ``not run``: a comparison is missing (its cells are not finished or not configured).
    """
    if not outcomes or "missing" in outcomes:
        return "not run"
    if all(o == "better" for o in outcomes):
        return "confirmed"
    if "worse" in outcomes and "better" not in outcomes:
        return "refuted"
    return "inconclusive"


def _per_example(out: Path, key: str) -> dict[str, dict[str, float]]:
    """metric -> {example id -> value} from a cell's eval/outputs.jsonl."""
    path = out / key / "eval" / "outputs.jsonl"
    values: dict[str, dict[str, float]] = {m: {} for m in PER_EXAMPLE}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for metric, fieldname in PER_EXAMPLE.items():
            if row.get(fieldname) is not None:
                values[metric][row["id"]] = float(row[fieldname])
    return values


def _pooled(cells: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Across seeds: the mean of the seeds' means; the interval is the one cell's, or the
    envelope of the seeds' intervals (conservative) when there are several."""
    vals = [c["metrics"].get(metric) for c in cells]
    vals = [v for v in vals if v]
    if not vals:
        return None
    if len(vals) == 1:
        return {**vals[0], "seeds": 1}
    cis = [v["ci95"] for v in vals if v.get("ci95")]
    ci = [min(c[0] for c in cis), max(c[1] for c in cis)] if len(cis) == len(vals) else None
    return {"mean": float(np.mean([v["mean"] for v in vals])), "ci95": ci, "seeds": len(vals), "per_seed": [v["mean"] for v in vals]}


CLAIMS = {
    1: "AEM (chains of edits) re-aligns text better than direct fine-tuning",
    2: "RL refinement improves AEM",
    3: "AEM transfers to a new value dataset from few examples (better than training the base model on the same k)",
}


def collect(cfg: BenchConfig, out: Path, cells: Sequence[Cell], fp: Mapping[str, str]) -> dict[str, Any]:
    """results.json: finished cells, aggregates per method and dataset, transfer curve, claims."""
    done: dict[str, dict[str, Any]] = {}
    for c in cells:
        if cell_status(out, c, fp[c.key]) == "done":
            done[c.key] = json.loads((out / c.key / CELL_FILE).read_text(encoding="utf-8"))
    resamples = cfg.evaluate.bootstrap or 1000
    per_ex: dict[str, dict[str, dict[str, float]]] = {}

    def values(key: str, metric: str, seed: int) -> dict[str, float]:
        if key not in per_ex:
            per_ex[key] = _per_example(out, key)
        return {f"s{seed}:{i}": v for i, v in per_ex[key][metric].items()}  # pool seeds as distinct pairs

    def compare(keys_a: Sequence[str], keys_b: Sequence[str], seeds: Sequence[int], metric: str) -> dict[str, Any] | None:
        if not all(k in done for k in (*keys_a, *keys_b)):
            return None
        a: dict[str, float] = {}
        b: dict[str, float] = {}
        for ka, kb, s in zip(keys_a, keys_b, seeds):
            a.update(values(ka, metric, s))
            b.update(values(kb, metric, s))
        return paired_difference(a, b, resamples=resamples)

    methods: dict[str, dict[str, Any]] = {}
    for d in cfg.datasets:
        methods[d] = {}
        for m in (m for m in METHODS if m in cfg.methods):
            cs = [done[k] for k in (method_key(s, d, m) for s in cfg.seeds) if k in done]
            if cs:
                methods[d][m] = {metric: _pooled(cs, metric) for metric in METRICS} | {
                    "wall_s": sum(c["wall_s"] for c in cs), "seeds": [c["seed"] for c in cs],
                    "reference": cs[0]["metrics"]["reference"]}  # fmt: skip

    def claim(cid: int, pairs: list[tuple[str, str, str, list[str], list[str]]]) -> dict[str, Any]:
        comps = []
        for label, a, b, keys_a, keys_b in pairs:
            # context beside the verdict, not part of it: what the claim costs in fidelity and coherence
            rouge = compare(keys_a, keys_b, cfg.seeds, "rouge_l")
            coh = compare(keys_a, keys_b, cfg.seeds, "coherence")
            for metric in ("alignment", "alignment_second"):
                diff = compare(keys_a, keys_b, cfg.seeds, metric)
                comps.append({"where": label, "a": a, "b": b, "metric": metric, "difference": diff, "outcome": outcome(diff),
                              "rouge_l_difference": rouge, "coherence_difference": coh, "coherence_outcome": outcome(coh)})
        return {"id": cid, "claim": CLAIMS[cid], "verdict": verdict([c["outcome"] for c in comps]), "comparisons": comps}

    claims = []
    for cid, (a, b) in ((1, ("aem", "direct")), (2, ("aem_rl", "aem"))):
        if a in cfg.methods and b in cfg.methods:
            claims.append(claim(cid, [(d, a, b, [method_key(s, d, a) for s in cfg.seeds], [method_key(s, d, b) for s in cfg.seeds]) for d in cfg.datasets]))
    transfer: dict[str, Any] = {}
    if cfg.transfer is not None:
        t = cfg.transfer
        for start in STARTS:
            transfer[f"from_{start}"] = {}
            for k in sorted(t.ks):
                cs = [done[key] for key in (transfer_key(s, start, k) for s in cfg.seeds) if key in done]
                if cs:
                    transfer[f"from_{start}"][str(k)] = {metric: _pooled(cs, metric) for metric in METRICS} | {"wall_s": sum(c["wall_s"] for c in cs)}
        claims.append(claim(3, [(f"{t.target}, k={k}", f"from_aem k={k}", f"from_base k={k}", [transfer_key(s, "aem", k) for s in cfg.seeds],
                                 [transfer_key(s, "base", k) for s in cfg.seeds]) for k in sorted(t.ks) if k > 0]))  # fmt: skip
    scorers = {key: done[key]["metrics"] for key in (scorer_key(d, r) for d in cfg.datasets for r in SCORERS) if key in done}
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {"sources": cfg.sources, "model": cfg.model, "seeds": cfg.seeds, "methods": cfg.methods,
                   "datasets": {n: asdict(s) for n, s in cfg.datasets.items()}, "transfer": asdict(cfg.transfer) if cfg.transfer else None,
                   "train": cfg.train, "dpo": cfg.dpo, "refine": cfg.refine, "reward": cfg.reward, "evaluate": asdict(cfg.evaluate)},
        "hardware": hardware(),
        "cells": {"total": len(cells), "done": len(done), "wall_s": sum(c.get("wall_s", 0.0) for c in done.values()),
                  "per_cell": {k: {"wall_s": c["wall_s"], "finished": c["finished"]} for k, c in done.items()}},
        "scorers": scorers,
        "methods": methods,
        "transfer": transfer,
        "claims": claims,
    }  # fmt: skip


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- report


def fmt(x: Any, digits: int = 3) -> str:
    """A metric as ``mean [lo, hi]``; ``-`` when absent. results.md uses only this formatting."""
    if not x:
        return "-"
    ci = x.get("ci95")
    body = f"{x['mean']:.{digits}f}"
    return f"{body} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else body


def _diff(x: Any) -> str:
    if not x:
        return "-"
    return f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]" if x.get("ci95") else f"{x['mean']:+.3f}"


TABLE_METRICS = (("alignment", "alignment (main scorer)"), ("alignment_second", "alignment (second scorer)"),
                 ("coherence", "coherence"), ("perplexity", "perplexity"), ("rouge_l", "ROUGE-L"))  # fmt: skip


def render_markdown(results: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """results.md, from results.json alone."""
    c = results["config"]
    cells = results["cells"]
    lines = [
        "# Benchmark: Second Thoughts claims", "",
        f"Config: `{' + '.join(c['sources'])}`; base model `{c['model']}`; seeds {c['seeds']}; generated {results['generated']}.",
        (f"Cells finished: {cells['done']} of {cells['total']}; compute time of the finished cells {fmt_duration(cells['wall_s'])} "
        f"on {results['hardware'].get('gpu') or str(results['hardware']['cpu_count']) + ' CPU cores'} ({results['hardware']['platform']})."), "",
        ("Each number is the mean over the test pairs with a 95% bootstrap interval. Alignment is the scorer's P(aligned) of the "
        "re-aligned text; the main scorer is the RL reward, the second one was trained independently (other seed, other half of the "
        "data). Perplexity is under the base model; ROUGE-L (0-100) against the gold aligned text."), "",
        "## Claims", "",
    ]  # fmt: skip
    for cl in results["claims"]:
        lines += [f"### ({cl['id']}) {cl['claim']}: **{cl['verdict']}**", "",
                  "| where | comparison | scorer | difference in alignment | outcome | difference in ROUGE-L | difference in coherence |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for cmp in cl["comparisons"]:
            rouge, coh = _diff(cmp.get("rouge_l_difference")), _diff(cmp.get("coherence_difference"))
            scorer = "main" if cmp["metric"] == "alignment" else "second"
            lines.append(f"| {cmp['where']} | {cmp['a']} - {cmp['b']} | {scorer} | {_diff(cmp['difference'])} | {cmp['outcome']} | {rouge} | {coh} |")
        coh_out = sorted({c.get("coherence_outcome", "missing") for c in cl["comparisons"]})
        lines += ["", f"Coherence in this claim: {', '.join(coh_out)} (paired 95% intervals of P(coherent); "
                  "`missing` without `evaluate.coherence` in the config).", ""]
    lines += [("Verdicts: *confirmed* when every paired 95% interval (per dataset or k, and per scorer) lies above 0; *refuted* when "
              "at least one lies below 0 and none above; otherwise *inconclusive*; *not run* while cells are missing."), ""]  # fmt: skip
    for d, by_method in results["methods"].items():
        spec = c["datasets"][d]
        lines += [f"## {d} ({spec['train']} training pairs, {spec['test']} test pairs)", "",
                  "| method | " + " | ".join(name for _, name in TABLE_METRICS) + " | time |", "|---" * (len(TABLE_METRICS) + 2) + "|"]  # fmt: skip
        for m, row in by_method.items():
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(fmt(row[k], 2 if k == "perplexity" else 3) for k, _ in TABLE_METRICS) + f" | {fmt_duration(row['wall_s'])} |")
        ref = next(iter(by_method.values()), {}).get("reference")
        if ref:
            for name, label in (("source", "unchanged source"), ("target", "gold aligned text")):
                lines.append(f"| *{label}* | {fmt(ref[name]['alignment'])} | {fmt(ref[name]['alignment_second'])} | | | |")
        lines.append("")
    if results["transfer"]:
        t = c["transfer"]
        lines += [f"## Few-shot transfer: {t['source']} -> {t['target']}", "",
                  "| k | start | " + " | ".join(name for _, name in TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 2) + "|"]  # fmt: skip
        for start, by_k in results["transfer"].items():
            for k, row in by_k.items():
                lines.append(f"| {k} | {start} | " + " | ".join(fmt(row[m], 2 if m == "perplexity" else 3) for m, _ in TABLE_METRICS) + " |")
        lines.append("")
    if results["scorers"]:
        lines += ["## Scorers (held-out test pairs)", "", "| scorer | seed | training pairs | accuracy | target above source |", "|---|---|---|---|---|"]
        for key, s in results["scorers"].items():
            lines.append(f"| {key} | {s['seed']} | {s['pairs']} | {s['test'].get('accuracy', 0):.3f} | {s['test'].get('pairwise_accuracy', 0):.3f} |")
        lines.append("")
    for name, path in (plots or {}).items():
        lines += [f"![{name}]({path})", ""]
    return "\n".join(lines)


def write_plots(results: Mapping[str, Any], out: Path) -> dict[str, str]:
    """alignment_vs_perplexity.png (one point per method and dataset) and transfer.png (alignment over k)."""
    from secondthoughts.plots import line_plot

    plots: dict[str, str] = {}
    points = [(d, m, row) for d, by in results["methods"].items() for m, row in by.items() if row.get("alignment") and row.get("perplexity")]
    if points:
        _scatter(out / "alignment_vs_perplexity.png", points)
        plots["alignment vs perplexity"] = "alignment_vs_perplexity.png"
    if any(results["transfer"].values()):
        series = {}
        for start, by_k in results["transfer"].items():
            for metric, label in (("alignment", "main scorer"), ("alignment_second", "second scorer")):
                ks = [int(k) for k, row in by_k.items() if row.get(metric)]
                series[f"{start.replace('_', ' ')} ({label})"] = (ks, [by_k[str(k)][metric]["mean"] for k in ks])
        line_plot(out / "transfer.png", series, xlabel="k (target training examples)", ylabel="alignment: mean P(aligned)", title="Few-shot transfer")
        plots["transfer curve"] = "transfer.png"
    return plots


def _scatter(path: Path, points: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    markers = dict(zip(dict.fromkeys(d for d, _, _ in points), "os^Dv<>"))
    colors = dict(zip(METHODS, ("tab:gray", "tab:purple", "tab:blue", "tab:green")))
    try:
        for d, m, row in points:
            x, y = row["perplexity"], row["alignment"]
            xerr = [[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]] if x.get("ci95") else None
            yerr = [[y["mean"] - y["ci95"][0]], [y["ci95"][1] - y["mean"]]] if y.get("ci95") else None
            ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, fmt=markers[d], color=colors[m], capsize=3, label=f"{METHOD_NAMES[m]}, {d}")
        ax.set_xlabel("perplexity under the base model (lower: more fluent)")
        ax.set_ylabel("alignment: mean P(aligned), main scorer")
        ax.set_title("Alignment against fluency (95% intervals)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)
