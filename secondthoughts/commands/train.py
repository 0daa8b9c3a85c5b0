"""``secondthoughts train``: AEM fine-tuning (chain-of-edits or direct rewrite) into a run folder.

Every field of :class:`secondthoughts.sft.TrainConfig` is a flag (``batch_size`` ->
``--batch-size``, booleans also as ``--no-...``). ``--config run.yaml`` reads the same fields
from YAML; flags given on the command line override it. Runs under
``accelerate launch --num_processes N [--cpu] -m secondthoughts train ...`` as well.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only once the data has been checked (cli.precheck)
    from secondthoughts.sft import TrainConfig

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--data", "--eval-data")


def add_config_arguments(p: argparse.ArgumentParser, cls: type | None = None) -> None:
    """One flag per dataclass field (default: TrainConfig's; ``settings.add_flags``). Defaults are
    suppressed so that only flags actually given override the YAML file; the help still shows them."""
    from secondthoughts import settings

    if cls is None:
        from secondthoughts.sft import TrainConfig as cls
    settings.add_flags(p, cls)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="config_file", default=None, help="YAML file of training settings (flags override)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from secondthoughts import settings
    from secondthoughts.sft import TrainConfig, init_settings

    # On resume the run's own settings (flags that contradict them are refused by sft.train);
    # a new run started from another takes that run's format and adapter shape by default.
    def carried(chosen: dict[str, Any]) -> dict[str, Any]:
        return init_settings(chosen["init_from"]) if chosen.get("init_from") else {}

    return settings.from_args(TrainConfig, args, "training settings", "train", defaults=carried)


def require_run(out: str) -> None:
    """``--resume`` of a folder that holds no run: said before anything loads."""
    from pathlib import Path

    if not (Path(out) / "config.json").is_file():
        raise FileNotFoundError(f"{out}: no run to resume (no config.json)")


def check_data(config: Any) -> None:
    """Read the examples before the model loads: a bad file fails in a second, not after it."""
    from secondthoughts.data import count_examples

    if not config.data:
        raise ValueError("no training data: pass --data examples.jsonl")
    for path in filter(None, (config.data, config.eval_data)):
        count_examples(path)


def run(args: argparse.Namespace) -> int:
    from secondthoughts import sft

    config = config_from_args(args)
    if args.resume:
        require_run(config.out)
    check_data(config)
    result = sft.train(config, resume=args.resume)
    st = result.state
    if not result.is_main_process:
        return 0
    best = f"best eval loss {st.best_eval:.4f} at step {st.best_step}" if st.best_eval is not None else "no eval"
    stop = " (stopped early)" if st.stopped_early else ""
    print(f"{result.out}: {st.step}/{result.steps_total} steps{stop}, {best}; model in {result.out / 'model'}")
    return 0
