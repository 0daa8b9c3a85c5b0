"""``secondthoughts learn`` in the background, for the editor's "learn from my corrections".

The learning run is a child process (``python -m secondthoughts learn``): it cannot stall or
crash the server, its memory is returned when it ends, and its one-line error is what the page
shows. It learns from the rows it is given (the server gives the corrections saved since the
last learning run, so each run adds what is new to the model in use). When it succeeds, ``on_done(run)`` gets the new run folder (the server then loads it and
switches to it); the run it started from is left as it was.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from secondthoughts import atomic

LOG_FILE = "learn.log"


def next_free(root: str | Path) -> Path:
    """``root-1``, ``root-2``, ...: the first that does not exist yet."""
    root = Path(root)
    k = 1
    while (p := root.with_name(f"{root.name}-{k}")).exists():
        k += 1
    return p


class LearnJob:
    """At most one learning run at a time; ``status()`` is safe to call from any thread."""

    def __init__(self, out_root: str | Path, extra_args: Sequence[str] = ()) -> None:
        self.out_root = Path(out_root)
        self.extra_args = list(extra_args)
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"state": "idle"}
        self._proc: subprocess.Popen[bytes] | None = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def running(self) -> bool:
        return self.status()["state"] in ("running", "loading")

    def start(self, run: str, corrections: bytes, on_done: Callable[[str], None]) -> dict[str, Any]:
        """Start learning ``run`` on ``corrections`` (JSONL rows, kept beside the new run as
        ``out_root-K.corrections.jsonl``) into the next free ``out_root-K``. RuntimeError while
        one is running."""
        with self._lock:
            if self._state["state"] in ("running", "loading"):
                raise RuntimeError(f"a learning run is already running ({self._state['out']})")
            out = next_free(self.out_root)
            out.parent.mkdir(parents=True, exist_ok=True)
            log = out.with_name(f"{out.name}.{LOG_FILE}")
            rows = atomic.write_atomic(out.with_name(f"{out.name}.corrections.jsonl"), corrections)
            argv = [sys.executable, "-m", "secondthoughts", "learn", "--model", run, "--corrections", str(rows),
                    "--out", str(out), "--no-progress", *self.extra_args]  # fmt: skip
            with open(log, "wb") as f:
                self._proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._state = {"state": "running", "from": run, "out": str(out), "log": str(log), "started": time.time()}
        threading.Thread(target=self._wait, args=(self._proc, out, log, on_done), daemon=True).start()
        return self.status()

    def _wait(self, proc: subprocess.Popen[bytes], out: Path, log: Path, on_done: Callable[[str], None]) -> None:
        rc = proc.wait()
        if rc != 0:
            self._finish("failed", message=last_error(log) or f"learn exited with status {rc}; see {log}")
            return
        self._update(state="loading")
        try:
            on_done(str(out))
        except Exception as e:  # noqa: BLE001 - the run is on disk; only switching to it failed
            self._finish("failed", message=f"learned {out}, but loading it failed: {e}")
            return
        self._finish("done", message=f"now using {out}")

    def _update(self, **kw: Any) -> None:
        with self._lock:
            self._state.update(kw)

    def _finish(self, state: str, message: str) -> None:
        self._update(state=state, message=message, seconds=round(time.time() - self._state["started"], 1))

    def stop(self) -> None:
        """End a running learning process (the server is shutting down)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def last_error(log: Path) -> str | None:
    """The ``error: ...`` line a failed command printed, if any."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)
