"""``secondthoughts learn``: continue a trained run on saved corrections (with replay), or train DPO
on preference pairs (``--pairs``).

Every field of :class:`secondthoughts.learn.LearnConfig` is a flag; ``--config`` reads them from
YAML and flags override it, as in ``train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from secondthoughts.commands.train import add_config_arguments

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--replay-data",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from secondthoughts.learn import LearnConfig

    p.add_argument("--config", dest="config_file", default=None, help="YAML file of learning settings (flags override)")
    p.add_argument("--resume", action="store_true", help="continue the learning run in --out from its last checkpoint")
    add_config_arguments(p, LearnConfig)


def run(args: argparse.Namespace) -> int:
    from secondthoughts import settings
    from secondthoughts.learn import INFO_FILE, LearnConfig, check, learn, learn_pairs

    config = settings.from_args(LearnConfig, args, "learning settings", "learn", file=INFO_FILE)
    if config.pairs:
        if args.resume:
            raise ValueError("a DPO learning run (--pairs) cannot resume: start it again in a new --out")
        out = learn_pairs(config)
        print(f"{out}: DPO on the pairs of {config.pairs}; model in {out / 'model'}")
        return 0
    if args.resume and not (Path(config.out) / INFO_FILE).is_file():
        raise FileNotFoundError(f"{config.out}: no learning run to resume (no {INFO_FILE})")
    if not args.resume:
        check(config)  # run, corrections and replay file: refused before any model loads
    result = learn(config, resume=args.resume)
    if result.is_main_process:
        st = result.state
        print(f"{result.out}: {st.step}/{result.steps_total} steps on corrections + replay; model in {result.out / 'model'}")
    return 0
