"""The benchmark's plan: each dataset's fixed split, the grid of cells with their dependencies,
keys and fingerprints, their status on disk, and how long each should take."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts.bench.config import (
    METHODS,
    SCORERS,
    STARTS,
    BenchConfig,
    ConfigError,
    DatasetSpec,
)
from secondthoughts.data import Example, split_examples
from secondthoughts.dataset_readers import read_dataset

CELL_FILE, TRAINED_FILE = "cell.json", "trained.json"


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
    from secondthoughts.chain_text import render_compact
    from secondthoughts.edits import DEFAULT_COST_SETS, augment_chains, tokenize

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

