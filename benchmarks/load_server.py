"""The editor server under load: N concurrent clients against ``secondthoughts serve`` on the shipped model.

    nice -n 10 python benchmarks/load_server.py [--clients 64] [--duration 60] [--mix realign=1,apply=2,save=2]
                                                [--model secondthoughts/examples/demo-run] [-- SERVE FLAGS...]

Starts the editor as a subprocess on a free loopback port (``OMP_NUM_THREADS=1``; flags after
``--`` go to ``serve``), then for ``--duration`` seconds drives it with ``--clients`` threads,
each sending one request after another on a new connection, its kind drawn from ``--mix``:
realign (a text of ``examples/demo.jsonl`` with its context), apply (that text's chain to its
target, a random subset kept), save (a correction tagged with a unique number). A client that
gets a 503 waits its Retry-After, as a browser page would.

Prints requests sent, answered (by status), errors by kind (reset, refused, closed without an
answer, cut short, timeout), latency p50 / p95 / p99 per kind, and the corrections file checked
line by line against the acknowledged saves: lost (acknowledged, not in the file) must be 0.
Exit status 1 on any reset or lost save. Goal: 0 resets and 0 lost at 64 clients.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "secondthoughts/examples/demo-run"
DEMO_DATA = ROOT / "secondthoughts/examples/demo.jsonl"
URL = re.compile(r"editor on http://127\.0\.0\.1:(\d+)/")


@dataclass
class Tally:
    """What the clients saw, shared under one lock."""

    sent: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)  # "realign 200", "save 503", ...
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    acked: set[str] = field(default_factory=set)  # tags of saves answered 200
    lock: threading.Lock = field(default_factory=threading.Lock)


def parse_mix(text: str) -> dict[str, float]:
    mix = {k: float(v) for k, v in (part.split("=") for part in text.split(","))}
    if not set(mix) <= {"realign", "apply", "save"} or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"expected realign=W,apply=W,save=W, got {text!r}")
    return mix


def start_server(model: Path, corrections: Path, serve_flags: list[str]) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "secondthoughts", "serve", "--model", str(model), "--port", "0", "--corrections", str(corrections), *serve_flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := URL.search(line):
            return proc, int(m.group(1))
    sys.exit(f"serve exited with status {proc.wait()} before listening: {' '.join(cmd)}")


def requests_for(examples: list[Any]) -> dict[str, Any]:
    """A maker of (path, body, save tag) for each kind."""
    from secondthoughts.edits import infer_text_edits

    chains = [[e.to_dict() for e in infer_text_edits(ex.source, ex.target)] for ex in examples]
    counter = iter(range(10**9))
    counter_lock = threading.Lock()

    def realign(rng: random.Random) -> tuple[str, dict[str, Any], str | None]:
        ex = rng.choice(examples)
        return "/api/realign", {"context": ex.context, "source": ex.source}, None

    def apply(rng: random.Random) -> tuple[str, dict[str, Any], str | None]:
        i = rng.randrange(len(examples))
        return "/api/apply", {"source": examples[i].source, "chain": chains[i], "keep": [rng.random() < 0.5 for _ in chains[i]]}, None

    def save(rng: random.Random) -> tuple[str, dict[str, Any], str | None]:
        with counter_lock:
            tag = f"#{next(counter)}"
        ex = rng.choice(examples)
        return "/api/save", {"context": ex.context, "source": f"{ex.source} {tag}", "target": f"{ex.target} {tag}"}, tag

    return {"realign": realign, "apply": apply, "save": save}


def error_kind(e: BaseException) -> str:
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed without an answer"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, http.client.IncompleteRead):
        return "cut short"
    return type(e).__name__


def client(port: int, seed: int, stop_at: float, mix: dict[str, float], makers: dict[str, Any], tally: Tally, timeout: float) -> None:
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    while time.monotonic() < stop_at:
        kind = rng.choices(kinds, weights)[0]
        path, body, tag = makers[kind](rng)
        data = json.dumps(body).encode()
        with tally.lock:
            tally.sent += 1
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", path, data, {"Content-Type": "application/json"})
            res = conn.getresponse()
            payload = res.read()
            json.loads(payload)  # every answer is JSON
            status, retry = res.status, res.getheader("Retry-After")
        except (OSError, http.client.HTTPException, ValueError) as e:
            with tally.lock:
                tally.errors[error_kind(e)] += 1
            continue
        finally:
            conn.close()
        elapsed = time.monotonic() - t0
        with tally.lock:
            tally.statuses[f"{kind} {status}"] += 1
            tally.latency[f"{kind} {status}"].append(elapsed)
            tally.latency["all"].append(elapsed)
            if tag and status == 200:
                tally.acked.add(tag)
        if status == 503:  # as a page would: wait what the server asks, a little jittered
            time.sleep(min(max(stop_at - time.monotonic(), 0), float(retry or 1) * rng.uniform(1.0, 1.5)))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]


def check_corrections(path: Path, acked: set[str]) -> dict[str, int]:
    """Every acknowledged save present exactly once; what else the file holds."""
    seen: collections.Counter[str] = collections.Counter()
    broken = 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            seen[json.loads(line)["target"].rsplit(" ", 1)[-1]] += 1
        except (ValueError, KeyError, AttributeError):
            broken += 1
    return {
        "rows": sum(seen.values()),
        "lost": len(acked - set(seen)),
        "duplicated": sum(1 for n in seen.values() if n > 1),
        "unacknowledged": len(set(seen) - acked),  # written, answer not received (in flight at the end)
        "broken lines": broken,
    }


def report(tally: Tally, check: dict[str, int], args: argparse.Namespace, wall: float) -> None:
    answered = sum(tally.statuses.values())
    print(f"{args.clients} clients, {wall:.0f} s, mix {','.join(f'{k}={v:g}' for k, v in args.mix.items())}")
    print(f"sent {tally.sent}, answered {answered} ({answered / wall:.1f}/s), errors {sum(tally.errors.values())}")
    print("answers: " + ", ".join(f"{k}: {n}" for k, n in sorted(tally.statuses.items())))
    print("errors by kind: " + (", ".join(f"{k}: {n}" for k, n in sorted(tally.errors.items())) or "none"))
    print(f"{'latency (s)':<16}{'n':>7}{'p50':>8}{'p95':>8}{'p99':>8}")
    for key in ["all", *sorted(k for k in tally.latency if k != "all")]:
        xs = tally.latency[key]
        print(f"{key:<16}{len(xs):>7}{percentile(xs, 0.5):>8.3f}{percentile(xs, 0.95):>8.3f}{percentile(xs, 0.99):>8.3f}")
    print(f"corrections file: {check['rows']} rows, {len(tally.acked)} saves acknowledged, lost {check['lost']}, "
          f"duplicated {check['duplicated']}, written but unacknowledged {check['unacknowledged']}, broken lines {check['broken lines']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEMO_RUN, help="run folder (default: the shipped demo run)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix("realign=1,apply=2,save=2"), help="request kinds and weights (default realign=1,apply=2,save=2)")
    ap.add_argument("--timeout", type=float, default=120, help="a client's socket timeout in seconds (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    args, serve_flags = ap.parse_known_args()
    serve_flags = [f for f in serve_flags if f != "--"]

    from secondthoughts.data import read_examples

    examples = list(read_examples(DEMO_DATA))
    makers = requests_for(examples)
    with tempfile.TemporaryDirectory(prefix="load-server-") as tmp:
        corrections = Path(tmp) / "corrections.jsonl"
        proc, port = start_server(args.model, corrections, serve_flags)
        tally = Tally()
        try:
            t0 = time.monotonic()
            threads = [
                threading.Thread(target=client, args=(port, args.seed * 1000 + k, t0 + args.duration, args.mix, makers, tally, args.timeout))
                for k in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:  # the last requests finish (each within the client timeout)
                t.join()
            wall = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        check = check_corrections(corrections, tally.acked)
    report(tally, check, args, wall)
    return 1 if tally.errors["reset"] or check["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
