"""``secondthoughts serve``: the web editor for interactive correction.

    secondthoughts serve --model RUN [--host 127.0.0.1] [--port 8000] [--corrections corrections.jsonl]

Open the printed address, enter a text, re-align it, accept / reject / rewrite edits, let the
model continue after a corrected edit, and save the corrected pair; the corrections file is
training data for ``secondthoughts train --data``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a `secondthoughts train` run folder (or a model folder with edit tokens)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--corrections", default="corrections.jsonl", help="JSONL that saved corrections are appended to (default corrections.jsonl)")
    p.add_argument("--mode", choices=("apply", "generate", "direct"), help="decoding mode (default: the run's own)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: enough to rewrite every source token)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="weights dtype (default auto: fp32 on CPU)")


def run(args: argparse.Namespace) -> int:
    from secondthoughts.commands.realign import _load
    from secondthoughts.server import make_server

    try:
        realigner = _load(args)
        server = make_server(
            realigner, args.host, args.port, args.corrections,
            settings={"mode": args.mode, "max_new_tokens": args.max_new_tokens},
        )
    except (ValueError, OSError) as e:  # a bad run folder, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"secondthoughts editor on {server.url} (model {realigner.name}; corrections -> {args.corrections}); Ctrl+C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
