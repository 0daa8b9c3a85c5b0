"""The web editor for interactive correction: ``secondthoughts serve --model RUN``.

A person enters a text, the model writes its chain of edits, and the person accepts, rejects or
rewrites single edits and lets the model continue after a corrected one (the paper's interactive
error correction). Corrected pairs are appended to a JSONL file that ``secondthoughts train
--data`` reads.

Standard library only: a ``ThreadingHTTPServer`` serving ``web/`` and a JSON API.

    GET  /api/health                          model, mode, corrections file
    POST /api/realign  {context, source}                 -> result
    POST /api/apply    {source, chain, keep?, add?}      -> text, edits, segments, keep
    POST /api/continue {context, source, prefix}         -> result (the model continues after prefix)
    POST /api/save     {context, source, target}         -> appends one row to the corrections file

A result is ``RealignResult.to_dict()`` plus ``edits`` (one record per edit: op, start, end,
old / new tokens and text, its readable line), ``segments`` (the inline diff) and ``keep``.
A ``chain`` item is an edit record (only op, start, old, new are read) or ``{"readable": LINE}``,
a line read where the previous edit ends: how a person rewrites an edit in place.

Errors are JSON ``{"error": message}``: 400 bad input (the message names the field), 413 body over
64 KiB, 415 not JSON, 422 a chain that does not read or apply, 403 a request from another site.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from secondthoughts.edits import (
    Edit,
    EditError,
    detokenize,
    parse_readable,
    render_readable,
    tokenize,
)
from secondthoughts.realign import apply_subset, as_chain

if TYPE_CHECKING:
    from secondthoughts.realign import Realigner

MAX_BODY = 64 * 1024
WEB_DIR = Path(__file__).parent / "web"
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- reading requests


def text_field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name, None if required else "")
    if value is None:
        raise ApiError(400, f"field {name!r}: missing")
    if not isinstance(value, str):
        raise ApiError(400, f"field {name!r}: expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ApiError(400, f"field {name!r}: empty")
    return value


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
                try:
                    edits.append(Edit.from_dict(item))
                except (TypeError, ValueError) as e:  # EditError is a ValueError
                    raise ApiError(400, f"{where}: {e}") from None
        return as_chain(edits, source, what=f"field {name!r}")[0]
    except EditError as e:
        raise ApiError(422, str(e)) from None


def read_line(line: str, source: str, before: Sequence[Edit], where: str) -> Edit:
    """One readable line, looked up where the edits ``before`` end. Their rendered lines parse
    back to exactly those edits, so prepending them sets parse_readable's cursor."""
    if "\n" in line.strip() or "\r" in line.strip():
        raise ApiError(400, f"{where}: one line only")
    head = render_readable(before, source) if before else ""
    try:
        parsed = parse_readable(f"{head}\n{line.strip()}" if head else line.strip(), source)
    except EditError as e:
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


# ---------------------------------------------------------------- views


def edit_view(chain: Sequence[Edit], source: str) -> list[dict[str, Any]]:
    """One record per edit: ``Edit.to_dict()`` (what the page sends back) plus what it shows."""
    lines = render_readable(chain, source).splitlines() if chain else []
    return [
        {**e.to_dict(), "end": e.end, "old_text": detokenize(e.old), "new_text": detokenize(e.new), "readable": line}  # type: ignore[arg-type]
        for e, line in zip(chain, lines)
    ]


def diff_segments(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> list[dict[str, Any]]:
    """The inline diff as a list of {kind, text, edit}: kind "same", "del", "ins", or "off" (a
    rejected edit's source text). Like ``diffview.inline_diff``, plus the edit index and the
    rejected edits that the page needs."""
    tokens = tokenize(source)
    out: list[dict[str, Any]] = []

    def add(kind: str, text: str, edit: int | None) -> None:
        if text:
            out.append({"kind": kind, "text": text, "edit": edit})

    cursor = 0
    for i, (e, k) in enumerate(zip(chain, keep)):
        add("same", detokenize(tokens[cursor : e.start]), None)
        if k:
            add("del", detokenize(e.old), i)  # type: ignore[arg-type]
            add("ins", detokenize(e.new), i)  # type: ignore[arg-type]
        elif e.old:
            add("off", detokenize(e.old), i)  # type: ignore[arg-type]
        cursor = e.end
    add("same", detokenize(tokens[cursor:]), None)
    return out


def chain_view(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> dict[str, Any]:
    return {
        "text": apply_subset(source, chain, keep),
        "edits": edit_view(chain, source),
        "segments": diff_segments(source, chain, keep),
        "keep": list(keep),
    }


# ---------------------------------------------------------------- the API


class Api:
    """The endpoints as plain methods (body dict -> response dict), so that the HTTP layer
    only routes and encodes."""

    def __init__(self, realigner: Realigner, corrections_path: str | os.PathLike[str], settings: Mapping[str, Any] | None = None) -> None:
        self.realigner = realigner
        self.corrections = Path(corrections_path)
        self.settings = dict(settings or {})
        # One model, many request threads: generation is not thread-safe and would only
        # contend for the same cores anyway.
        self.model_lock = threading.Lock()
        self.file_lock = threading.Lock()

    def health(self) -> dict[str, Any]:
        from secondthoughts import __version__

        return {
            "ok": True,
            "version": __version__,
            "model": self.realigner.name,
            "mode": self.settings.get("mode") or self.realigner.default_mode(),
            "corrections": str(self.corrections),
        }

    def _realign(self, context: str, source: str, prefix: list[Edit] | None) -> dict[str, Any]:
        try:
            with self.model_lock:
                result = self.realigner.realign(context, source, prefix=prefix, **self.settings)
        except EditError as e:
            raise ApiError(422, str(e)) from None
        except ValueError as e:  # a mode the run was not trained for
            raise ApiError(400, str(e)) from None
        out = result.to_dict()
        out.update(chain_view(source, result.chain, [True] * len(result.chain)))
        return out

    def realign(self, body: Mapping[str, Any]) -> dict[str, Any]:
        context, source = text_field(body, "context", required=False), text_field(body, "source")
        prefix = read_chain(body, "prefix", source) if body.get("prefix") else None
        return self._realign(context, source, prefix)

    def continue_(self, body: Mapping[str, Any]) -> dict[str, Any]:
        context, source = text_field(body, "context", required=False), text_field(body, "source")
        if (self.settings.get("mode") or self.realigner.default_mode()) == "direct":
            raise ApiError(400, "this model writes text directly (trained with --mode direct): it has no chain to continue")
        return self._realign(context, source, read_chain(body, "prefix", source))

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
        row = {
            "context": text_field(body, "context", required=False),
            "source": text_field(body, "source"),
            "target": text_field(body, "target"),
            "meta": {"origin": "secondthoughts serve", "model": self.realigner.name, "saved_at": datetime.now(UTC).isoformat(timespec="seconds")},
        }
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self.file_lock:
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
        return {"ok": True, "path": str(self.corrections)}


ROUTES = {"/api/realign": Api.realign, "/api/apply": Api.apply, "/api/continue": Api.continue_, "/api/save": Api.save}


# ---------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server: EditorServer
    server_version = "secondthoughts"
    # The default HTTP/1.0: one request per connection, so a body left unread after an error
    # is never taken for the next request.
    protocol_version = "HTTP/1.0"
    timeout = 60  # a client that announces a body and never sends it cannot hold a thread forever

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not self._host_ok():
            return
        if path == "/api/health":
            self._json(200, self.server.api.health())
        elif path in STATIC:
            self._static(STATIC[path])
        elif path == "/favicon.ico":  # browsers ask for it; there is none
            self._send(204, b"", "image/x-icon")
        elif path in ROUTES:
            self._json(405, {"error": f"{path} takes POST with a JSON body"})
        else:
            self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if not self._host_ok():
            return
        route = ROUTES.get(path)
        if route is None:
            known = path in STATIC or path == "/api/health"
            self._json(405 if known else 404, {"error": f"{path} takes GET" if known else f"no endpoint {path}"})
            return
        try:
            self._json(200, route(self.server.api, self._body()))
        except ApiError as e:
            self._json(e.status, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the page must get a message, the log a traceback
            traceback.print_exc()
            self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

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
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "a JSON body with a Content-Length header is required")
        n = int(length)
        if n > MAX_BODY:
            raise ApiError(413, f"request body is {n} bytes; the limit is {MAX_BODY} ({MAX_BODY // 1024} KiB): shorten the text")
        # Only JSON: a cross-site form post (text/plain, no preflight) cannot reach the API.
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Everything is served from here: no inline scripts, no other sites.
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _static(self, name: str) -> None:
        path = WEB_DIR / name
        self._send(200, path.read_bytes(), CONTENT_TYPES[path.suffix])

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class EditorServer(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl+C does not wait for a slow generation to finish

    def __init__(self, address: tuple[str, int], api: Api, *, quiet: bool = False) -> None:
        self.api = api
        self.quiet = quiet
        self.loopback = is_loopback(address[0])
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def make_server(
    realigner: Realigner,
    host: str = "127.0.0.1",
    port: int = 8000,
    corrections_path: str | os.PathLike[str] = "corrections.jsonl",
    *,
    settings: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> EditorServer:
    """A ready server (port 0: any free port, see ``.url``); run it with ``serve_forever()``.
    ``settings``: keyword arguments for ``Realigner.realign`` (mode, max_new_tokens, ...)."""
    if not is_loopback(host):
        print(
            f"WARNING: serving on {host}, not localhost. There is no authentication: anyone who can reach "
            f"this port can run the model and append rows to {corrections_path}.",
            file=sys.stderr,
        )
    return EditorServer((host, port), Api(realigner, corrections_path, settings), quiet=quiet)
