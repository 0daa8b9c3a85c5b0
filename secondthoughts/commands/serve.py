"""``secondthoughts serve``: the web editor for interactive correction.

    secondthoughts serve --model RUN [--host 127.0.0.1] [--port 8000] [--corrections corrections.jsonl]

Open the printed address, enter a text, re-align it, accept / reject / rewrite edits, let the
model continue after a corrected edit, and save the corrected pair. "Learn from my corrections"
runs ``secondthoughts learn`` on the saved file in the background (into ``--learn-out``-1, -2,
...) and switches to the learned model when it is ready; the earlier one stays a click away.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secondthoughts.commands.realign import add_decoding_arguments, add_dtype_argument
from secondthoughts.editor_api import Limits

# Example files cli.precheck reads before the parser (and torch) loads.
EXAMPLE_FLAGS = ("--replay-data",)


def positive(kind: type[int] | type[float], least: float = 1) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind``, at least ``least`` (0 < x for floats)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < least or (kind is float and value <= 0):
            raise argparse.ArgumentTypeError(f"expected a number >= {least:g}, got {text!r}" if kind is int else f"expected seconds > 0, got {text!r}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a `secondthoughts train` run folder (or a model folder with edit tokens); default: the run shipped in the package")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--corrections", default="corrections.jsonl", help="JSONL that saved corrections are appended to (default corrections.jsonl)")
    lim = Limits()
    p.add_argument("--max-source-tokens", type=positive(int), help="longest source in model tokens; longer: 413 (default: what the run's training length leaves room for)")
    p.add_argument("--max-new-tokens", type=positive(int), help="token budget of one request; a source that may need more: 422 (default: enough to rewrite every source token)")
    p.add_argument("--time-budget", type=positive(float), default=lim.time_budget, metavar="S", help=f"seconds one request may wait for the model (then 503) and hold it (then 422) (default {lim.time_budget:g})")
    p.add_argument("--queue", type=positive(int, 0), default=lim.queue, help=f"requests that may wait for the model, shortest source first; more: 503 (default {lim.queue})")
    p.add_argument("--max-connections", type=positive(int), default=lim.max_connections, help=f"connections handled at once; more: 503 (default {lim.max_connections})")
    p.add_argument("--read-timeout", type=positive(float), default=lim.read_timeout, metavar="S", help=f"seconds for a request to arrive; longer: 408 (default {lim.read_timeout:g})")
    add_decoding_arguments(p, ("mode", "no_repeat", "best_of", "rerank", "coherence_weight"))
    p.add_argument("--learn-out", default="runs/learned", metavar="PATH", help="learned runs go to PATH-1, PATH-2, ... (default runs/learned)")
    p.add_argument("--replay-data", metavar="FILE", help="examples `learn` replays against forgetting (default: the run's own training data, if still there)")
    p.add_argument("--no-learn", action="store_true", help="no learning from the editor")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_dtype_argument(p)


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
        limits = Limits(args.max_source_tokens, args.max_new_tokens, args.time_budget, args.queue, args.max_connections, args.read_timeout)
        realigner = load_realigner(args)
        learn = None if args.no_learn else LearnJob(args.learn_out, ["--replay-data", args.replay_data] if args.replay_data else [])
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
