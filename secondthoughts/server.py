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
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from secondthoughts.api_messages import (
    ApiError,
    busy,
    parse_body,
)
from secondthoughts.editor_api import GET_ROUTES, ROUTES, Api, Limits

if TYPE_CHECKING:
    from secondthoughts.learn_job import LearnJob
    from secondthoughts.realign import Realigner

MAX_BODY = 64 * 1024
LINGER_S, LINGER_BYTES = 2.0, 1 << 20  # what is read of a request left unread before closing
WEB_DIR = Path(__file__).parent / "web"
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
DIGITS = re.compile("[0-9]{1,12}")  # not str.isdigit, which takes "²"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
