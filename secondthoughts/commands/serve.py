"""``secondthoughts serve``: the web editor for interactive correction.

    secondthoughts serve --model RUN [--host 127.0.0.1] [--port 8000] [--corrections corrections.jsonl]

Open the printed address, enter a text, re-align it, accept / reject / rewrite edits, let the
model continue after a corrected edit, and save the corrected pair. "Learn from my corrections"
runs ``secondthoughts learn`` on the saved file in the background (into ``--learn-out``-1, -2,
...) and switches to the learned model when it is ready; the earlier one stays a click away.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secondthoughts.commands.realign import DeviceOptions
from secondthoughts.editor_api import Limits
from secondthoughts.settings import Part, add_config_flag, add_parts, flags_given, setting

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--replay-data",)


@dataclass
class ServeOptions:
    """``serve``'s own flags (also: ``editor_api.Limits``, some of ``decoding.DecodeSettings``)."""

    model: str | None = setting(None, "a `secondthoughts train` run folder (or a model folder with edit tokens); default: the run shipped in the package", type=str)
    host: str = setting("127.0.0.1", "address to bind (127.0.0.1: this machine only; there is no authentication)")
    port: int = setting(8000, "port (0: any free port)")
    corrections: str = setting("corrections.jsonl", "JSONL that saved corrections are appended to")
    learn_out: str = setting("runs/learned", "learned runs go to PATH-1, PATH-2, ...", metavar="PATH")
    replay_data: str | None = setting(None, "examples `learn` replays against forgetting (default: the run's own training data, if still there)", type=str, metavar="FILE")
    learn: bool = setting(True, "no learning from the editor", flag="--no-learn")


def settings_parts(args: argparse.Namespace | None = None) -> list[Part]:
    from secondthoughts.decoding import RERANK_SETTINGS, DecodeSettings

    return [(ServeOptions, None), (Limits, None), (DecodeSettings, ("mode", "no_repeat", "best_of", "rerank", *RERANK_SETTINGS)), (DeviceOptions, None)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flag(p, "serve settings")
    add_parts(p, settings_parts())


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from secondthoughts.commands.realign import best_of_settings, check_best_of, load_realigner
    from secondthoughts.learn_job import LearnJob
    from secondthoughts.editor_api import check_corrections_path
    from secondthoughts.server import make_server

    try:
        check_corrections_path(Path(args.corrections))  # before the model loads: a bad path fails at once
        check_best_of(args)
        limits = Limits(**flags_given(Limits, args))
        realigner = load_realigner(args)
        learn = LearnJob(args.learn_out, ["--replay-data", args.replay_data] if args.replay_data else []) if args.learn else None
        server = make_server(
            realigner, args.host, args.port, args.corrections, settings={"mode": args.mode, **best_of_settings(args), "no_repeat": args.no_repeat}, limits=limits,
            learn=learn, load=lambda run: load_realigner(args, run),
        )  # fmt: skip
    except (ValueError, OSError) as e:  # a bad run folder or corrections path, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"secondthoughts editor on {server.url} (model {realigner.name}; corrections -> {args.corrections}); Ctrl+C stops it", flush=True)
    # SIGINT and SIGTERM both stop it cleanly, also when it was started in the background, where
    # the shell leaves SIGINT ignored and Python then never raises KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
