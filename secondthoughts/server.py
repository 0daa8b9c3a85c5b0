"""The web editor for interactive correction: ``secondthoughts serve --model RUN``.

A person enters a text, the model writes its chain of edits, and the person accepts, rejects or
rewrites single edits and lets the model continue after a corrected one (the paper's interactive
error correction). Corrected pairs are appended to a JSONL file that ``secondthoughts learn``
reads: the editor can learn from them in the background and switch to the learned model.

Standard library only: a threading HTTP server serving ``web/`` and a JSON API.

    GET  /api/health                          model, mode, corrections file, limits, models used
    POST /api/realign  {context, source}                 -> result
    POST /api/apply    {source, chain, keep?, add?}      -> text, edits, segments, keep
    POST /api/continue {context, source, prefix}         -> result (the model continues after prefix)
    POST /api/save     {context, source, target}         -> appends one row to the corrections file
    POST /api/learn    {}                                -> starts `learn` on the corrections saved since the last one
    GET  /api/learn                                      -> its state: idle, running, loading, done or failed
    POST /api/model    {run}                             -> switch to a model this server has used

A result is ``RealignResult.to_dict()`` plus ``edits`` (one record per edit: op, start, end,
old / new tokens and text, its readable line), ``segments`` (the inline diff) and ``keep``.
A ``chain`` item is an edit record (only op, start, old, new are read) or ``{"readable": LINE}``,
a line read where the previous edit ends: how a person rewrites an edit in place.

Every answer, errors included, is JSON; an error is ``{"error": message}``: 400 bad input (the
message names the field), 403 a request from another site, 404 / 405 / 501 no such page or
method, 408 a request that did not arrive within the read timeout, 411 / 413 / 415 no length,
too large (the body, or a source longer than the model was trained on), not JSON, 422 a chain
that does not read or apply, a pair that is not a correction, or a source over the token or time
budget, 503 (with ``Retry-After``) busy: the model queue or the connection limit is full.

Under load (see :class:`Limits`): the model runs one request at a time, at most ``queue`` wait,
shortest source first, so a small request waits behind at most the one running; a request waits
at most ``time_budget`` seconds for the model (then 503) and holds it at most as long (then 422).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import ipaddress
import itertools
import json
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from secondthoughts.data import pair_problem
from secondthoughts.decoding import new_token_budget
from secondthoughts.edits import (
    Edit,
    EditError,
    detokenize,
    parse_readable,
    render_readable,
    tokenize,
)
from secondthoughts.realign import apply_subset, as_chain
from secondthoughts.sequences import encode_prompt

if TYPE_CHECKING:
    from secondthoughts.learn_job import LearnJob
    from secondthoughts.realign import Realigner, RealignResult

MAX_BODY = 64 * 1024
MAX_DEPTH = 16  # JSON nesting: a chain of edit records needs 4
LINGER_S, LINGER_BYTES = 2.0, 1 << 20  # what is read of a request left unread before closing
WEB_DIR = Path(__file__).parent / "web"
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SURROGATE = re.compile("[\ud800-\udfff]")
DIGITS = re.compile("[0-9]{1,12}")  # not str.isdigit, which takes "²"


@dataclass(frozen=True)
class Limits:
    """What one request may take, and how much the server takes at once (each a ``serve`` flag)."""

    max_source_tokens: int | None = None  # None: what the run's max_length leaves room for (413 past it)
    max_new_tokens: int | None = None  # None: realign's own budget, bounded by the source cap (422 past it)
    time_budget: float = 20.0  # seconds one request may wait for the model (503 past it) and hold it (422 past it)
    queue: int = 4  # requests that may wait for the model (503 past it)
    max_connections: int = 128  # connections handled at once (503 past it)
    read_timeout: float = 5.0  # seconds for a request's headers and body to arrive (408 past it)

    def __post_init__(self) -> None:
        for name in ("max_source_tokens", "max_new_tokens"):
            if (v := getattr(self, name)) is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not (self.time_budget > 0 and self.read_timeout > 0):  # also refuses NaN
            raise ValueError("time_budget and read_timeout must be > 0 seconds")
        if self.queue < 0 or self.max_connections < 1:
            raise ValueError("queue must be >= 0 and max_connections >= 1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def busy(message: str, retry_after: int) -> ApiError:
    return ApiError(503, f"{message}; try again in {retry_after} s", {"Retry-After": str(retry_after)})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


# ---------------------------------------------------------------- reading requests


def check_json(body: Any) -> None:
    """Refuse what ``json.loads`` lets through but nothing after it can take: lone surrogates
    (not text: no UTF-8 encoding, no tokenizer) and nesting deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int, str]] = [(body, 0, "request body")]
    while stack:  # a loop, not recursion: the depth is what is being checked
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if m := SURROGATE.search(value):
                raise ApiError(400, f"{where}: contains a lone surrogate ({ascii(m.group())}), which is not text")
        elif isinstance(value, dict):
            for key, item in value.items():
                if m := SURROGATE.search(key):
                    raise ApiError(400, f"{where}: a key contains a lone surrogate ({ascii(m.group())}), which is not text")
                stack.append((item, depth + 1, f"field {key!r}" if depth == 0 else where))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)


def text_field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name, None if required else "")
    if value is None:
        raise ApiError(400, f"field {name!r}: missing")
    if not isinstance(value, str):
        raise ApiError(400, f"field {name!r}: expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ApiError(400, f"field {name!r}: empty")
    return value


def read_edit(item: Mapping[str, Any], where: str) -> Edit:
    """An edit record: op, start, and old / new as lists of token strings."""
    op, start = item.get("op"), item.get("start")
    if not isinstance(op, str):
        raise ApiError(400, f"{where}: 'op' must be a string")
    if not isinstance(start, int) or isinstance(start, bool):
        raise ApiError(400, f"{where}: 'start' must be an integer")
    for key in ("old", "new"):
        tokens = item.get(key, [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ApiError(400, f"{where}: {key!r} must be a list of token strings")
    try:
        return Edit.from_dict(dict(item))
    except (TypeError, ValueError) as e:  # EditError is a ValueError
        raise ApiError(400, f"{where}: {e}") from None


def read_chain(body: Mapping[str, Any], name: str, source: str) -> list[Edit]:
    """The chain in field ``name``: a compact or readable string, or a list of edit records and
    ``{"readable": LINE}`` items. Structure errors are 400, chains that do not fit are 422."""
    value = body.get(name)
    if value is None:
        raise ApiError(400, f"field {name!r}: missing")
    try:
        if isinstance(value, str):
            return as_chain(value, source, what=f"field {name!r}")[0]
        if not isinstance(value, list):
            raise ApiError(400, f"field {name!r}: expected a list of edits or a string, got {type(value).__name__}")
        edits: list[Edit] = []
        for i, item in enumerate(value):
            where = f"field {name!r}, edit {i + 1}"
            if not isinstance(item, dict):
                raise ApiError(400, f"{where}: expected an object, got {type(item).__name__}")
            if "readable" in item:
                if not isinstance(item["readable"], str) or not item["readable"].strip():
                    raise ApiError(400, f"{where}: 'readable' must be a non-empty line")
                edits.append(read_line(item["readable"], source, edits, where))
            else:
                edits.append(read_edit(item, where))
        return as_chain(edits, source, what=f"field {name!r}")[0]
    except ValueError as e:  # EditError, and what the parsers let escape (e.g. a JSONDecodeError)
        raise ApiError(422, str(e) if isinstance(e, EditError) else f"field {name!r} cannot be read: {e}") from None


def read_line(line: str, source: str, before: Sequence[Edit], where: str) -> Edit:
    """One readable line, looked up where the edits ``before`` end. Their rendered lines parse
    back to exactly those edits, so prepending them sets parse_readable's cursor."""
    if "\n" in line.strip() or "\r" in line.strip():
        raise ApiError(400, f"{where}: one line only")
    head = render_readable(before, source) if before else ""
    try:
        parsed = parse_readable(f"{head}\n{line.strip()}" if head else line.strip(), source)
    except ValueError as e:  # EditError, and what the parser lets escape (e.g. a JSONDecodeError)
        raise EditError(f"{where}: {e}") from None
    if len(parsed) != len(before) + 1:
        raise EditError(f"{where}: {line!r} is not an edit")
    return parsed[-1]


def read_keep(body: Mapping[str, Any], n: int) -> list[bool]:
    keep = body.get("keep")
    if keep is None:
        return [True] * n
    if not isinstance(keep, list) or not all(isinstance(k, bool) for k in keep):
        raise ApiError(400, "field 'keep': expected a list of true / false, one per edit")
    if len(keep) != n:
        raise ApiError(400, f"field 'keep': {len(keep)} flags for a chain of {n} edits")
    return keep


@dataclass
class RealignRequest:
    """A request for the model: /api/realign and /api/continue. ``options`` go to
    ``Realigner.realign`` as keyword arguments (the place for per-request search settings)."""

    context: str
    source: str
    prefix: list[Edit] | None = None
    options: dict[str, Any] | None = None

    @classmethod
    def read(cls, body: Mapping[str, Any], *, prefix_required: bool = False) -> RealignRequest:
        context, source = text_field(body, "context", required=False), text_field(body, "source")
        prefix = read_chain(body, "prefix", source) if prefix_required or body.get("prefix") else None
        return cls(context, source, prefix, {})


# ---------------------------------------------------------------- views


def edit_view(chain: Sequence[Edit], source: str) -> list[dict[str, Any]]:
    """One record per edit: ``Edit.to_dict()`` (what the page sends back) plus what it shows."""
    lines = render_readable(chain, source).splitlines() if chain else []
    return [
        {**e.to_dict(), "end": e.end, "old_text": detokenize(e.old), "new_text": detokenize(e.new), "readable": line}  # type: ignore[arg-type]
        for e, line in zip(chain, lines)
    ]


def diff_segments(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> list[dict[str, Any]]:
    """The inline diff as a list of {kind, text, edit}: ``diffview.segments`` as JSON (kind "same",
    "del", "ins", or "off" for a rejected edit's source text; edit: its index in the chain)."""
    from secondthoughts.diffview import segments

    return [asdict(s) for s in segments(tokenize(source), chain, keep)]


def chain_view(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> dict[str, Any]:
    return {
        "text": apply_subset(source, chain, keep),
        "edits": edit_view(chain, source),
        "segments": diff_segments(source, chain, keep),
        "keep": list(keep),
    }


# ---------------------------------------------------------------- the API


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
        chain = read_chain(body, "chain", source)
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
GET_PATHS = {*STATIC, *GET_ROUTES, "/favicon.ico"}


# ---------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server: EditorServer
    server_version = "secondthoughts"
    # The default HTTP/1.0: one request per connection, so a body left unread after an error
    # is never taken for the next request.
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        self.timeout = self.server.api.limits.read_timeout  # per read; the body also has a deadline
        self.started = time.monotonic()
        self.responded = False
        super().setup()

    def handle_one_request(self) -> None:
        """The standard library's, answering in JSON where it would close without a word: 408
        for a request that does not arrive in time, 503 past the connection limit."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # it answered (send_error)
                return
            self.request_version = "HTTP/1.0"  # never answer as HTTP/0.9 (a body without status or headers)
            if self.server.overloaded():
                self._error(busy(f"the server is handling {self.server.max_connections} connections", 1))
                return
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"method {self.command!r} is not supported: use GET or POST")
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
            if not self.responded:  # else the client stopped reading the answer: nothing to say
                self._json(408, {"error": f"the request did not arrive within {self.timeout:g} s"})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not self._host_ok():
            return
        if path in GET_ROUTES:
            self._json(200, GET_ROUTES[path](self.server.api))
        elif path in STATIC:
            self._static(STATIC[path])
        elif path == "/favicon.ico":  # browsers ask for it; there is none
            self._send(204, b"", "image/x-icon")
        elif path in ROUTES:
            self._json(405, {"error": f"{path} takes POST with a JSON body"}, {"Allow": "POST"})
        else:
            self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if not self._host_ok():
            return
        route = ROUTES.get(path)
        if route is None:
            known = path in GET_PATHS
            self._json(405 if known else 404, {"error": f"{path} takes GET" if known else f"no endpoint {path}"}, {"Allow": "GET"} if known else None)
            return
        try:
            self._json(200, route(self.server.api, self._body()))
        except ApiError as e:
            self._error(e)
        except Exception as e:  # noqa: BLE001 - the page must get a message, the log a traceback
            traceback.print_exc()
            self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        allow = ", ".join(m for m, paths in (("GET", GET_PATHS), ("POST", ROUTES)) if path in paths) or None
        if allow is None:
            self._json(404, {"error": f"no such page: {path}"})
        else:
            self._json(405, {"error": f"{path} takes {allow}, not {self.command}"}, {"Allow": allow})

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own errors (bad request line, headers too long, unknown method)
        in JSON like every other answer, not HTML."""
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # with a status line and headers, even to a line that names no version
        self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _host_ok(self) -> bool:
        """Refuse what a browser on this machine could be tricked into sending: on a loopback
        bind, a Host that is not loopback (DNS rebinding); a POST from another origin."""
        host = self.headers.get("Host", "")
        try:
            name = urlsplit(f"http://{host}").hostname or ""
        except ValueError:  # e.g. an unclosed "[" in the header
            name = "?"
        if self.server.loopback and host and not is_loopback(name):  # no Host: not a browser
            self._json(403, {"error": f"host {host!r} refused: this server answers to localhost only"})
            return False
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin and origin not in (f"http://{host}", f"https://{host}"):
            self._json(403, {"error": f"cross-origin request from {origin} refused"})
            return False
        return True

    def _body(self) -> dict[str, Any]:
        if "Transfer-Encoding" in self.headers:  # HTTP/1.0 has no chunks; with a length too it would be ambiguous
            raise ApiError(411, "send the JSON body with a Content-Length, not a Transfer-Encoding")
        lengths = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not lengths:
            raise ApiError(411, "a JSON body with a Content-Length header is required")
        length = lengths.pop()
        if lengths or not DIGITS.fullmatch(length):
            raise ApiError(400, f"Content-Length must be one number in ASCII digits, got {self.headers.get_all('Content-Length')!r}")
        n = int(length)
        if n > MAX_BODY:
            raise ApiError(413, f"request body is {n} bytes; the limit is {MAX_BODY} ({MAX_BODY // 1024} KiB): shorten the text")
        # Only JSON: a cross-site form post (text/plain, no preflight) cannot reach the API.
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
        return parse_body(self._read(n))

    def _read(self, n: int) -> bytes:
        """``n`` bytes of body, all within the read timeout from the request's start (408): a
        client that sends less than its Content-Length, or drips it, cannot hold a thread."""
        timeout = self.server.api.limits.read_timeout
        data = bytearray()
        try:
            while len(data) < n:
                left = self.started + timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(n - len(data))
                if not chunk:
                    raise ApiError(400, f"request body ended after {len(data)} of its {n} bytes (Content-Length)")
                data += chunk
        except TimeoutError:
            raise ApiError(408, f"request body incomplete after {timeout:g} s: {len(data)} of {n} bytes arrived") from None
        finally:
            self.connection.settimeout(timeout)
        return bytes(data)

    def _send(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Everything is served from here: no inline scripts, no other sites.
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")
        self._send(status, data, "application/json; charset=utf-8", headers)

    def _error(self, e: ApiError) -> None:
        self._json(e.status, {"error": str(e)}, e.headers)

    def _static(self, name: str) -> None:
        path = WEB_DIR / name
        self._send(200, path.read_bytes(), CONTENT_TYPES[path.suffix])

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object of text that the API can take (else 400)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ApiError(400, f"request body: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    check_json(body)
    return body


class EditorServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl+C does not wait for a slow generation to finish
    # The listen backlog (the standard library's is 5): a burst of clients waits in it for the
    # accept loop instead of being reset by the kernel.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], api: Api, *, quiet: bool = False) -> None:
        self.api = api
        self.quiet = quiet
        self.loopback = is_loopback(address[0])
        self.max_connections = api.limits.max_connections
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    @property
    def connections(self) -> int:
        """Connections being handled now (the answer written, a closing one may linger)."""
        return self._active

    def overloaded(self) -> bool:
        return self._active > self.max_connections

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:  # counted here, in the accept loop, so a burst is counted whole
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._active_lock:
            self._active -= 1

    def shutdown_request(self, request: Any) -> None:
        """Half-close, then read what the client still sends before closing: closing a socket
        with unread data makes the kernel send a reset, which can destroy the answer in flight."""
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            deadline, got = time.monotonic() + LINGER_S, 0
            while got < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away: nothing to report
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self.api.close()


def make_server(
    realigner: Realigner,
    host: str = "127.0.0.1",
    port: int = 8000,
    corrections_path: str | os.PathLike[str] = "corrections.jsonl",
    *,
    settings: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    quiet: bool = False,
    learn: LearnJob | None = None,
    load: Callable[[str], Realigner] | None = None,
) -> EditorServer:
    """A ready server (port 0: any free port, see ``.url``); run it with ``serve_forever()``.
    ``settings``: keyword arguments for ``Realigner.realign`` (mode, max_new_tokens, ...);
    ``limits``: see :class:`Limits`; ``learn``: the background learning job (None: no learning);
    ``load``: how a learned run is loaded (default ``Realigner(run)``). ``ValueError`` for a
    corrections path no save could use."""
    if not is_loopback(host):
        print(
            f"WARNING: serving on {host}, not localhost. There is no authentication: anyone who can reach "
            f"this port can run the model and append rows to {corrections_path}.",
            file=sys.stderr,
        )
    api = Api(realigner, corrections_path, settings, limits, learn=learn, load=load)
    try:
        return EditorServer((host, port), api, quiet=quiet)
    except BaseException:
        api.close()
        raise
