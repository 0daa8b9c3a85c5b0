"""One entry point: ``secondthoughts <command>``.

Each command lives in ``secondthoughts.commands.<module>`` with ``add_arguments(parser)`` and
``run(args) -> int``; a command whose flags come from settings dataclasses names them in
``settings_parts(args)``, and its settings are read by one rule (``settings.resolve``: defaults,
then ``--config`` YAML, then the flags given) before ``run``. Only the chosen command's module is imported, so ``edits`` and
``prepare`` start without loading torch. A module may name the flags that hold example files
(``EXAMPLE_FLAGS``): those files are read and checked before the full parser (and torch) loads,
so a bad ``--data`` fails in well under a second; and the flags that name a file to write
(``OUTPUT_FLAGS``), refused at once when they name a folder rather than after the work.

Errors: every command turns a failure into one line on stderr, ``error: ...``, and exit status
1 (expected failures: bad input, files, settings, a full disk) or 70 (anything else: a bug).
``--debug`` (or ``SECONDTHOUGHTS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from typing import Any, NoReturn

# name -> (module under secondthoughts.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "show what secondthoughts does on a few hand-written examples"),
    "edits": ("edits", "infer and show the chain of edits between two texts"),
    "prepare": ("prepare", "read a dataset and write normalized examples as JSONL"),
    "train": ("train", "fine-tune a model on chains of edits (AEM) or direct rewrites"),
    "reward": ("reward", "train or apply the value-alignment reward model"),
    "realign": ("realign", "re-align texts with a trained model: chain of edits, applied"),
    "learn": ("learn", "continue a trained run on corrections saved in the editor, with replay against forgetting"),
    "refine": ("refine", "refine a chain-of-edits run by RL against a value-alignment reward (RLOO, KL, AIL)"),
    "serve": ("serve", "the web editor: re-align, correct edits, let the model continue, save corrections"),
    "evaluate": ("evaluate", "re-align a test set and report alignment, fluency, faithfulness, edit behaviour and speed"),
    "bench": ("bench", "the benchmark grid: methods x datasets x seeds, few-shot transfer, two scorers, claims judged from intervals"),
}


DEBUG_ENV = "SECONDTHOUGHTS_DEBUG"
EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED = 1, 70, 130


class Parser(argparse.ArgumentParser):
    """argparse that reads ``-1,1,2`` or ``-0.5`` after a flag as its value: no flag here starts
    with a minus and a digit, so such an argument can only be a value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(?:\.?\d|inf|nan)", re.IGNORECASE)

    def error(self, message: str) -> NoReturn:
        """One line, as every other error (the usage of some commands runs to dozens of lines)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_debug(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``--debug`` on the parser and on every sub-command's, so it may stand anywhere."""
    default = False if top else argparse.SUPPRESS  # a sub-parser must not reset the top's value
    p.add_argument("--debug", action="store_true", default=default, help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--debug" in a.option_strings for a in sub._actions):
                    _add_debug(sub)


def _chosen(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(prog="secondthoughts", description=__doc__.splitlines()[0])
    from secondthoughts import __version__

    parser.add_argument("--version", action="version", version=f"secondthoughts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(f"secondthoughts.commands.{module}").add_arguments(p)
            parser.set_defaults(command_parser=p)
    _add_debug(parser, top=True)
    return parser


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to ``flag`` (``--flag V`` or ``--flag=V``), read without a parser."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    values += [v for a, v in zip(argv, argv[1:]) if a == flag]
    return [v for v in values if v]


def precheck(module: Any, argv: list[str]) -> None:
    """Read the example files named by the module's ``EXAMPLE_FLAGS`` (DataError on a bad one);
    refuse a folder given to one of its ``OUTPUT_FLAGS``."""
    if "-h" in argv or "--help" in argv:
        return
    _check_paths(module, lambda flag: _flag_values(argv, flag))


def _check_paths(module: Any, values: Any) -> None:
    """``precheck``'s checks on the paths ``values(flag)`` gives for each of the module's flags."""
    for flag in getattr(module, "OUTPUT_FLAGS", ()):
        for path in values(flag):
            if os.path.isdir(path):
                raise ValueError(f"{flag} {path}: is a directory; give the file to write")
    for flag in getattr(module, "EXAMPLE_FLAGS", ()):
        from secondthoughts.data import count_examples

        for path in values(flag):
            count_examples(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as the chosen command reads it: parsed, then (a command with
    ``settings_parts``) every setting filled in by one rule, ``settings.resolve``: the defaults,
    then ``--config``, then the flags given."""
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(f"secondthoughts.commands.{COMMANDS[args.command][0]}") if args.command else None
    if hasattr(module, "settings_parts"):
        from secondthoughts.settings import resolve

        resolve(args, module.settings_parts(args), f"{args.command} settings", args.command_parser.error)  # type: ignore[union-attr]
        if args.config_file:  # the file's paths get the checks the flags' got before the parser
            _check_paths(module, lambda flag: [v] if isinstance(v := getattr(args, flag[2:].replace("-", "_"), None), str) and v else [])
    return args


def _run(argv: list[str]) -> int:
    chosen = _chosen(argv)
    if chosen in COMMANDS:
        precheck(importlib.import_module(f"secondthoughts.commands.{COMMANDS[chosen][0]}"), argv)
    args = parse_args(argv)
    if not args.command:
        build_parser(argv).print_help()
        return 2
    module = importlib.import_module(f"secondthoughts.commands.{COMMANDS[args.command][0]}")
    return int(module.run(args) or 0)


_debugging = [False]  # set by main: --debug or SECONDTHOUGHTS_DEBUG


def reraise_if_debugging() -> None:
    """Called in the ``except`` block of a command that prints its own one-line error: under
    --debug the error goes on, so that its traceback shows."""
    if _debugging[0]:
        raise  # the exception the caller is handling  # noqa: PLE0704


def is_expected(e: BaseException) -> bool:
    """Failures of input, files, settings or resources, as opposed to bugs. The package raises
    ValueError subclasses (DataError, EditError, ConfigError, CheckpointError) for bad input."""
    return isinstance(e, (ValueError, OSError, MemoryError)) or type(e).__module__.split(".")[0] == "yaml"


def error_line(e: BaseException) -> str:
    """One line that says what went wrong."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        message = f"{where}: {e.strerror}"
    else:
        message = str(e) or type(e).__name__
    message = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    if is_expected(e):
        return f"error: {message}"
    return f"error: {type(e).__name__}: {message} (an internal error; run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging[0] = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            raise
        print(error_line(e), file=sys.stderr, flush=True)
        return EXIT_ERROR if is_expected(e) else EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
