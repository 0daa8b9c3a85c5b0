"""``secondthoughts refine``: refine an AEM run by RL against a value-alignment reward.

    secondthoughts refine --policy runs/aem --reward runs/reward --data train.jsonl --out runs/rl
    secondthoughts refine --out runs/rl --resume          # continue a killed run exactly

Every field of :class:`secondthoughts.refine.RefineConfig` is a flag (``prompts_per_step`` ->
``--prompts-per-step``, booleans also as ``--no-...``); ``--config run.yaml`` reads the same
fields from YAML, and flags override it. Runs under ``accelerate launch --multi_gpu
--num_processes N -m secondthoughts refine ...`` (or ``torchrun``) as well.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from secondthoughts.commands.train import add_config_arguments, require_run

if TYPE_CHECKING:  # torch loads only once the data has been checked (cli.precheck)
    from secondthoughts.refine import RefineConfig

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--data", "--eval-data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from secondthoughts.refine import RefineConfig

    p.add_argument("--config", dest="config_file", default=None, help="YAML file of refinement settings (flags override)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(p, RefineConfig)


def config_from_args(args: argparse.Namespace) -> RefineConfig:
    from secondthoughts import settings
    from secondthoughts.refine import RefineConfig

    # On resume the run's own settings; flags that contradict them are refused by the resume check.
    return settings.from_args(RefineConfig, args, "refinement settings", "refine")


def check_data(config: RefineConfig) -> None:
    """Read the prompts before the policy and reward models load."""
    from secondthoughts.data import count_examples

    if not config.data:
        raise ValueError("no prompts: pass --data examples.jsonl")
    for path in filter(None, (config.data, config.eval_data)):
        count_examples(path)


def run(args: argparse.Namespace) -> int:
    from secondthoughts.refine import refine

    config = config_from_args(args)
    if args.resume:
        require_run(config.out)
    check_data(config)
    result = refine(config, resume=args.resume)
    if not result.is_main_process:
        return 0
    steps = [r for r in result.history if "reward" in r and "eval_reward" not in r]
    evals = [r for r in result.history if "eval_reward" in r]
    summary = f"{result.out}: {result.state.step}/{config.steps} steps"
    if steps:
        last = steps[-1]
        summary += f"; last step reward {last['reward']:.3f}, KL {last['kl']:.3f}, valid {last['valid']:.2f}"
    if len(evals) >= 2:
        summary += f"; held-out reward {evals[0]['eval_reward']:.3f} -> {evals[-1]['eval_reward']:.3f}"
    if result.state.step >= config.steps:
        summary += f"; model in {result.out / 'model'}"
    print(summary)
    return 0
