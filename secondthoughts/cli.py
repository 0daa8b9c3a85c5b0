"""One entry point: ``secondthoughts <command>``.

Each command lives in ``secondthoughts.commands.<module>`` with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen command's module is imported, so ``edits`` and
``prepare`` start without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under secondthoughts.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "show what secondthoughts does on a few hand-written examples"),
    "edits": ("edits", "infer and show the chain of edits between two texts"),
    "prepare": ("prepare", "read a dataset and write normalized examples as JSONL"),
    "train": ("train", "fine-tune a model on chains of edits (AEM) or direct rewrites"),
    "reward": ("reward", "train or apply the value-alignment reward model"),
    "realign": ("realign", "re-align texts with a trained model: chain of edits, applied"),
    "refine": ("refine", "refine a chain-of-edits run by RL against a value-alignment reward (RLOO, KL, AIL)"),
    "serve": ("serve", "the web editor: re-align, correct edits, let the model continue, save corrections"),
    "evaluate": ("evaluate", "re-align a test set and report alignment, fluency, faithfulness, edit behaviour and speed"),
    "bench": ("bench", "the benchmark grid: methods x datasets x seeds, few-shot transfer, two scorers, claims judged from intervals"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secondthoughts", description=__doc__.splitlines()[0])
    from secondthoughts import __version__

    parser.add_argument("--version", action="version", version=f"secondthoughts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(f"secondthoughts.commands.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(f"secondthoughts.commands.{COMMANDS[args.command][0]}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
