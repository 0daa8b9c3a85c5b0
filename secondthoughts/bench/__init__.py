"""The benchmark harness: the paper's claims as a grid of cached cells.

``secondthoughts bench --config benchmarks/paper.yaml --out bench/`` trains and evaluates

- methods x datasets x seeds: ``direct`` (``sft.train`` mode direct), ``dpo`` (TRL's DPOTrainer
  from the direct model of the same cell, see :mod:`secondthoughts.dpo`), ``aem`` (``sft.train``
  mode coe) and ``aem_rl`` (``refine`` from the aem cell's run against the main scorer);
- few-shot transfer: the source dataset's AEM model (merged) and the base model, each trained on
  k examples of the target dataset, k in ``transfer.ks`` (k = 0: no training);
- two scorers per dataset (``reward_train.train``): ``main`` (seed ``scorer_seeds[0]``, first half of the
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

The package: :mod:`~secondthoughts.bench.config` (the YAML settings, checked),
:mod:`~secondthoughts.bench.plan` (splits, cells, fingerprints, status, time estimates),
:mod:`~secondthoughts.bench.run` (:class:`Bench`: computing cells) and
:mod:`~secondthoughts.bench.report` (results.json, claims, results.md, plots). Everything public is
importable from ``secondthoughts.bench``.
"""

from __future__ import annotations

from secondthoughts.bench.config import (
    METHOD_NAMES,
    METHODS,
    METRICS,
    PER_EXAMPLE,
    SCORERS,
    STARTS,
    BenchConfig,
    ConfigError,
    DatasetSpec,
    EvalSettings,
    Speeds,
    TransferSpec,
    config_from_dict,
    deep_merge,
    load_config,
    parse_set,
)
from secondthoughts.bench.plan import (
    CELL_FILE,
    TRAINED_FILE,
    Cell,
    DataStats,
    Split,
    cell_settings,
    cell_status,
    data_stats,
    estimate_s,
    fingerprints,
    fmt_duration,
    method_key,
    plan,
    scorer_key,
    select,
    split_dataset,
    transfer_epochs,
    transfer_key,
)
from secondthoughts.bench.report import (
    CLAIMS,
    TABLE_METRICS,
    collect,
    fmt,
    hardware,
    outcome,
    paired_difference,
    render_markdown,
    summarize_eval,
    verdict,
    write_plots,
)
from secondthoughts.bench.run import (
    Bench,
)

__all__ = [
    "Bench",
    "BenchConfig",
    "CELL_FILE",
    "CLAIMS",
    "Cell",
    "ConfigError",
    "DataStats",
    "DatasetSpec",
    "EvalSettings",
    "METHODS",
    "METHOD_NAMES",
    "METRICS",
    "PER_EXAMPLE",
    "SCORERS",
    "STARTS",
    "Speeds",
    "Split",
    "TABLE_METRICS",
    "TRAINED_FILE",
    "TransferSpec",
    "cell_settings",
    "cell_status",
    "collect",
    "config_from_dict",
    "data_stats",
    "deep_merge",
    "estimate_s",
    "fingerprints",
    "fmt",
    "fmt_duration",
    "hardware",
    "load_config",
    "method_key",
    "outcome",
    "paired_difference",
    "parse_set",
    "plan",
    "render_markdown",
    "scorer_key",
    "select",
    "split_dataset",
    "summarize_eval",
    "transfer_epochs",
    "transfer_key",
    "verdict",
    "write_plots",
]
