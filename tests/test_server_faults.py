"""Faults of the editor server process: ``secondthoughts serve`` as a subprocess on 127.0.0.1, its
clients on real sockets. A burst that arrives while the server is stopped (SIGSTOP) waits in the
listen backlog; SIGKILL in the middle of a save burst loses no acknowledged save; a restarted
server appends after the row the kill cut short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_server

memorized_run = test_server.memorized_run

URL = re.compile(r"editor on http://127\.0\.0\.1:(\d+)/")


def start_serve(run: Path, corrections: Path) -> tuple[subprocess.Popen[str], int]:
    """``secondthoughts serve`` on a free port; (process, port) once it listens."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "secondthoughts", "serve", "--model", str(run), "--port", "0", "--corrections", str(corrections)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first line it prints is the address
        if m := URL.search(line):
            # Keep reading what it prints after: a full pipe would block the server, and then its exit.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(m.group(1))
    raise AssertionError(f"serve exited with {proc.wait()} before listening")


def save_request(k: int | str) -> bytes:
    body = json.dumps({"context": "c", "source": f"text {k}", "target": f"fixed {k}"}).encode()
    head = f"POST /api/save HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def read_answer(s: socket.socket) -> int:
    """The status of a whole answer (its body as long as its Content-Length), else OSError."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    if not length or len(body) != int(length.group(1)):
        raise ConnectionError(f"answer cut short: {data[:80]!r}")
    return int(head.split()[1])


def saved_targets(path: Path) -> tuple[list[str], list[str]]:
    """(targets of the rows that parse, lines that do not: at most a last one cut by a kill)."""
    targets, broken = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            targets.append(json.loads(line)["target"])
        except ValueError:
            broken.append(line)
    return targets, broken


@pytest.mark.slow
def test_a_stalled_then_killed_server_loses_no_acknowledged_save(memorized_run, tmp_path):
    corrections = tmp_path / "corrections.jsonl"
    proc, port = start_serve(memorized_run, corrections)
    acked: list[str] = []
    try:
        # 1. 64 clients arrive while the server is stopped: all connect at once (the backlog
        #    holds them) and every one is answered once it runs again.
        os.kill(proc.pid, signal.SIGSTOP)
        connect_s: list[float] = []
        statuses: list[int] = []
        connected = threading.Semaphore(0)

        def early(k: int) -> None:
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                connect_s.append(time.monotonic() - t0)
                connected.release()
                s.sendall(save_request(k))
                statuses.append(read_answer(s))
                acked.append(f"fixed {k}")

        threads = [threading.Thread(target=early, args=(k,)) for k in range(64)]
        for t in threads:
            t.start()
        for _ in threads:
            connected.acquire(timeout=10)
        os.kill(proc.pid, signal.SIGCONT)
        for t in threads:
            t.join()
        assert max(connect_s) < 0.5 and statuses == [200] * 64

        # 2. 16 clients save as fast as they can; SIGKILL once 40 more are acknowledged.
        enough, stop = threading.Event(), threading.Event()
        lock = threading.Lock()
        counter = iter(range(64, 10**6))

        def saver() -> None:
            while not stop.is_set():
                with lock:
                    k = next(counter)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                        s.sendall(save_request(k))
                        ok = read_answer(s) == 200
                except OSError:  # the kill: refused, reset or cut short, never acknowledged
                    continue
                if ok:
                    with lock:
                        acked.append(f"fixed {k}")
                        if len(acked) >= 64 + 40:
                            enough.set()

        savers = [threading.Thread(target=saver) for _ in range(16)]
        for t in savers:
            t.start()
        assert enough.wait(300)
        proc.kill()
        proc.wait()
        stop.set()
        for t in savers:
            t.join()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    targets, broken = saved_targets(corrections)
    assert len(broken) <= 1 and sorted(set(acked) - set(targets)) == [] and len(targets) == len(set(targets))

    # 3. restarted on the same file: the next row starts on a line of its own
    proc, port = start_serve(memorized_run, corrections)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(save_request("0!"))
            assert read_answer(s) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    after, broken_after = saved_targets(corrections)
    assert after[-1] == "fixed 0!" and after[:-1] == targets and broken_after == broken
