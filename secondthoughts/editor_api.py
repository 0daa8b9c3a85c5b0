"""The editor's API behind the HTTP layer (``server``): one model at a time behind a gate with a
queue and a time budget, and one method per route, each taking and returning JSON-able dicts."""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secondthoughts.api_messages import (
    ApiError,
    RealignRequest,
    busy,
    chain_field,
    chain_view,
    read_keep,
    read_line,
    text_field,
)
from secondthoughts.data import pair_problem
from secondthoughts.decoding import new_token_budget
from secondthoughts.edits import Edit, EditError
from secondthoughts.sequences import encode_prompt
from secondthoughts.settings import positive, setting

if TYPE_CHECKING:
    from secondthoughts.learn_job import LearnJob
    from secondthoughts.realign import Realigner, RealignResult

@dataclass(frozen=True)
class Limits:
    """What one request may take, and how much the server takes at once (each a ``serve`` flag)."""

    max_source_tokens: int | None = setting(None, "longest source in model tokens; longer: 413 (default: what the run's training length leaves room for)", type=positive(int))
    max_new_tokens: int | None = setting(None, "token budget of one request; a source that may need more: 422 (default: enough to rewrite every source token)", type=positive(int))
    # The default decoding, best of 16, takes 6-12 s a text on 2 CPU threads.
    time_budget: float = setting(60.0, "seconds one request may wait for the model (then 503) and hold it (then 422)", metavar="S", type=positive(float))
    queue: int = setting(4, "requests that may wait for the model, shortest source first; more: 503", type=positive(int, 0))
    max_connections: int = setting(128, "connections handled at once; more: 503", type=positive(int))
    read_timeout: float = setting(5.0, "seconds for a request's headers and body to arrive; longer: 408", metavar="S", type=positive(float))

    def __post_init__(self) -> None:
        for name in ("max_source_tokens", "max_new_tokens"):
            if (v := getattr(self, name)) is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not (self.time_budget > 0 and self.read_timeout > 0):  # also refuses NaN
            raise ValueError("time_budget and read_timeout must be > 0 seconds")
        if self.queue < 0 or self.max_connections < 1:
            raise ValueError("queue must be >= 0 and max_connections >= 1")


def check_corrections_path(path: Path) -> None:
    """Refuse at start a corrections path that no save could append to (``ValueError``)."""
    if path.is_dir():
        raise ValueError(f"corrections file {path} is a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"corrections file {path} is not writable")
        return
    for parent in path.absolute().parents:  # the nearest one that exists must be a writable folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"corrections file {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"corrections file {path}: folder {parent} is not writable")
            return


class ModelGate:
    """The model, one request at a time. At most ``queue`` requests wait, the cheapest first (so a
    small request waits behind at most the one running), each at most ``max_wait`` seconds; past
    either, a 503 whose ``Retry-After`` comes from how long requests have held the model."""

    def __init__(self, queue: int, max_wait: float) -> None:
        self.queue, self.max_wait = queue, max_wait
        self._cond = threading.Condition()
        self._running = False
        self._waiting: list[tuple[int, int]] = []  # a heap of (cost, arrival)
        self._arrivals = itertools.count()
        self._mean_s = 1.0  # a running mean of the seconds one request holds the model

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._mean_s * (len(self._waiting) + 1)))

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        with self._cond:
            if self._running or self._waiting:
                self._wait(cost)
            self._running = True
        t0 = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - t0)
                self._running = False
                self._cond.notify_all()

    def _wait(self, cost: int) -> None:
        if len(self._waiting) >= self.queue:
            raise busy(f"the model is busy ({len(self._waiting)} requests waiting)", self.retry_after())
        entry = (cost, next(self._arrivals))
        heapq.heappush(self._waiting, entry)
        deadline = time.monotonic() + self.max_wait
        try:
            while self._running or self._waiting[0] != entry:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise busy(f"the model stayed busy for {self.max_wait:g} s", self.retry_after())
                self._cond.wait(left)
        finally:
            self._waiting.remove(entry)
            heapq.heapify(self._waiting)
            self._cond.notify_all()  # whoever is first now checks again


class _OverTime(Exception):
    """Raised from the model's forward pass once a request's time budget is spent."""


def source_cap(realigner: Realigner) -> int:
    """Source tokens that fit the training length: the prompt plus a completion about as long
    again (what ``Realigner`` leaves room for) within the run's ``max_length``, else the model's
    positions."""
    length = realigner.max_length or getattr(realigner.model.config, "max_position_embeddings", None) or 1024
    return max(1, (length - 16) // 2 - len(encode_prompt(realigner.tokenizer, "", "")))


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text``, safe beside the model's thread: the Rust tokenizer's ``encode`` changes
    nothing, while transformers' ``__call__`` flips a flag on the tokenizer that thread uses."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: no shared Rust state to race
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return len(backend.encode(text, add_special_tokens=False).ids)


class Api:
    """The endpoints as plain methods (body dict -> response dict), so that the HTTP layer
    only routes and encodes. ``close()`` removes the time-budget hook from the model."""

    def __init__(
        self,
        realigner: Realigner,
        corrections_path: str | os.PathLike[str],
        settings: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        *,
        learn: LearnJob | None = None,
        load: Callable[[str], Realigner] | None = None,
    ) -> None:
        self.corrections = Path(corrections_path)
        check_corrections_path(self.corrections)
        self.settings = dict(settings or {})
        self.limits = limits or Limits()
        # One model, many request threads: generation is not thread-safe and would only contend
        # for the same cores anyway. A request starts within one time budget or is told to come
        # back, so every answer comes within two.
        self.gate = ModelGate(self.limits.queue, max_wait=self.limits.time_budget)
        self.file_lock = threading.Lock()
        # Realigner takes no deadline: a hook on every forward pass ends a generation past it.
        self._deadline: float | None = None
        self.learner, self._load = learn, load
        self.runs: list[str] = []  # the models this server has used, the first one first
        self._learned_rows = 0  # rows of the corrections file that a learning run has taken
        self._attach(realigner)

    def _attach(self, realigner: Realigner) -> None:
        self.realigner = realigner
        self.mode = self.settings.get("mode") or realigner.default_mode()
        self.max_source_tokens = self.limits.max_source_tokens or source_cap(realigner)
        self._cap_origin = "serve --max-source-tokens" if self.limits.max_source_tokens else (
            f"what the run's training length of {realigner.max_length} tokens leaves room for" if realigner.max_length
            else "what the model's positions leave room for"
        )
        self._hook = realigner.model.register_forward_pre_hook(self._check_time)
        if realigner.name not in self.runs:
            self.runs.append(realigner.name)

    def close(self) -> None:
        self._hook.remove()
        if self.learner is not None:
            self.learner.stop()

    def health(self) -> dict[str, Any]:
        from secondthoughts import __version__

        return {
            "ok": True,
            "version": __version__,
            "model": self.realigner.name,
            "mode": self.mode,
            "corrections": str(self.corrections),
            "limits": {**asdict(self.limits), "max_source_tokens": self.max_source_tokens},
            "best_of": self.settings.get("best_of", 1),
            "runs": list(self.runs),
            "learn": self.learner is not None,
        }

    # ------------------------------------------------------------ the model

    def _check_time(self, module: Any, args: Any) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise _OverTime

    def _check_source(self, req: RealignRequest) -> int:
        """The source's tokens, within the source cap (else 413, before any wait)."""
        n = count_tokens(self.realigner.tokenizer, req.source)
        if n > self.max_source_tokens:
            raise ApiError(413, f"field 'source': {n} tokens, over the {self.max_source_tokens} this server takes ({self._cap_origin}): shorten the text")
        return n

    def _check_budget(self, req: RealignRequest) -> None:
        """The new tokens the request may take, within the token budget (else 422). Run with the
        model held: realign's own budget tokenizes with transformers' ``__call__``."""
        if not self.limits.max_new_tokens:
            return
        need = self.settings.get("max_new_tokens") or new_token_budget(self.realigner.tokenizer, [req.source], self.mode)
        if need > self.limits.max_new_tokens:
            raise ApiError(
                422, f"field 'source': re-aligning it may take {need} new tokens, over this server's budget of "
                f"{self.limits.max_new_tokens} (serve --max-new-tokens): shorten the text",
            )

    def _realign(self, req: RealignRequest) -> dict[str, Any]:
        cost = self._check_source(req)
        with self.gate.hold(cost):
            self._check_budget(req)
            result = self._generate(req)
        out = result.to_dict()
        out.update(chain_view(req.source, result.chain, [True] * len(result.chain)))
        return out

    def _generate(self, req: RealignRequest) -> RealignResult:
        budget = self.limits.time_budget
        self._deadline = time.monotonic() + budget
        try:
            return self.realigner.realign(req.context, req.source, prefix=req.prefix, **{**self.settings, **(req.options or {})})
        except _OverTime:
            raise ApiError(422, f"re-aligning this text took over the time budget of {budget:g} s (serve --time-budget): shorten the text") from None
        except EditError as e:
            raise ApiError(422, str(e)) from None
        except ValueError as e:  # a mode the run was not trained for
            raise ApiError(400, str(e)) from None
        finally:
            self._deadline = None

    def realign(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._realign(RealignRequest.read(body))

    def continue_(self, body: Mapping[str, Any]) -> dict[str, Any]:
        req = RealignRequest.read(body, prefix_required=True)
        if self.mode == "direct":
            raise ApiError(400, "this model writes text directly (trained with --mode direct): it has no chain to continue")
        return self._realign(req)

    # ------------------------------------------------------------ chains and corrections

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        source = text_field(body, "source")
        chain = chain_field(body, "chain", source)
        keep = read_keep(body, len(chain))
        if body.get("add") is not None:
            chain, keep = self._add(source, chain, keep, text_field(body, "add"))
        return chain_view(source, chain, keep)

    @staticmethod
    def _add(source: str, chain: list[Edit], keep: list[bool], line: str) -> tuple[list[Edit], list[bool]]:
        """Insert the edit of one readable line (looked up from the start of the source, or
        ``at token N``) in source order, accepted. Rejected edits in its way give way to it."""
        try:
            new = read_line(line, source, [], "field 'add'")
        except EditError as e:
            raise ApiError(422, str(e)) from None
        pairs: list[tuple[Edit, bool]] = []
        for i, (e, k) in enumerate(zip(chain, keep)):
            if e.end <= new.start or new.end <= e.start:  # the two can stand in one chain
                pairs.append((e, k))
            elif k:
                raise ApiError(422, f"field 'add': {line.strip()!r} overlaps edit {i + 1}; reject that edit first")
        at = sum(e.end <= new.start for e, _ in pairs)
        pairs.insert(at, (new, True))
        return [e for e, _ in pairs], [k for _, k in pairs]

    def save(self, body: Mapping[str, Any]) -> dict[str, Any]:
        context, source, target = text_field(body, "context", required=False), text_field(body, "source"), text_field(body, "target")
        if reason := pair_problem(source, target):  # what `prepare` would refuse
            raise ApiError(422, f"field 'target': {reason}; a correction must change the text")
        row = {
            "context": context,
            "source": source,
            "target": target,
            "meta": {"origin": "secondthoughts serve", "model": self.realigner.name, "saved_at": datetime.now(UTC).isoformat(timespec="seconds")},
        }
        try:
            with self.file_lock:
                self._append((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        except OSError as e:
            status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            raise ApiError(status, f"cannot append to {self.corrections}: {e.strerror or e}") from None
        return {"ok": True, "path": str(self.corrections)}

    def _append(self, line: bytes) -> None:
        """One row, on disk before the answer (fsync): an acknowledged save survives a crash."""
        self.corrections.parent.mkdir(parents=True, exist_ok=True)
        with open(self.corrections, "a+b") as f:
            # A line cut short by a crash would otherwise swallow this row.
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)  # one write in append mode: rows from threads never interleave
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------ learning and switching models

    def learn(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start learning the model in use on the corrections saved since the last learning run
        (409 while one runs)."""
        if self.learner is None:
            raise ApiError(501, "learning is off on this server (serve --no-learn)")
        with self.file_lock:
            rows = self.corrections.read_bytes().splitlines(keepends=True) if self.corrections.is_file() else []
        new = [r for r in rows[self._learned_rows :] if r.strip()]
        if not new:
            since = " since the last learning run" if self._learned_rows else " yet"
            raise ApiError(422, f"no corrections saved{since} in {self.corrections}: save one first")

        def done(run: str) -> None:
            self.use(run)
            self._learned_rows = len(rows)

        try:
            return self.learner.start(self.realigner.name, b"".join(new), done)
        except RuntimeError as e:
            raise ApiError(409, str(e)) from None

    def learn_status(self) -> dict[str, Any]:
        status = self.learner.status() if self.learner is not None else {"state": "off"}
        return {**status, "model": self.realigner.name, "runs": list(self.runs)}

    def switch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Use another model this server has used (e.g. the one before learning)."""
        run = text_field(body, "run")
        if run not in self.runs:
            raise ApiError(422, f"field 'run': {run!r} is not one of this server's models {self.runs}")
        if self.learner is not None and self.learner.running():
            raise ApiError(409, "a learning run is in progress: switch when it has finished")
        if run != self.realigner.name:
            self.use(run)
        return self.learn_status()

    def use(self, run: str) -> None:
        """Load ``run`` (requests go on meanwhile), then swap it in between two requests."""
        from secondthoughts.realign import Realigner

        new = (self._load or Realigner)(run)
        new.name = run
        while True:
            try:
                with self.gate.hold(0):
                    self._hook.remove()
                    self._attach(new)
                return
            except ApiError:  # the queue is full: wait for a free place like a request would
                time.sleep(0.2)


ROUTES = {
    "/api/realign": Api.realign, "/api/apply": Api.apply, "/api/continue": Api.continue_, "/api/save": Api.save,
    "/api/learn": Api.learn, "/api/model": Api.switch,
}  # fmt: skip
GET_ROUTES = {"/api/health": Api.health, "/api/learn": Api.learn_status}


