"""The editor server under load, over its limits and given hostile input: a real server on
127.0.0.1, real sockets, the tiny memorized run of ``test_server``.

Each probe is one the server used to fail: connection resets in a burst (a listen backlog of 5),
unbounded work and waits, 500s for lone surrogates, deep nesting and a Content-Length of "²",
a 60 s hang on a body shorter than its Content-Length, HTML for unknown methods, answers cut by
a reset, a corrections path no save could use, and corrections whose target is their source.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
import test_server
from test_server import CONTEXT, SOURCE, TARGET, post, request, serving, wait_until

from secondthoughts.cli import main
from secondthoughts.data import DataError
from secondthoughts.dataset_readers import read_dataset
from secondthoughts.server import Limits, make_server

memorized_run = test_server.memorized_run
realigner = test_server.realigner

LONG_SOURCE = "Tom hits his brother and yells at him when he is angry, then he runs away."  # under the cap of 54 tokens


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A request as bytes; ``Content-Length`` from the body unless ``headers`` give one."""
    hdrs = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))} if body else {"Host": "127.0.0.1"}
    hdrs.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return f"{method} {path} HTTP/1.0\r\n{head}\r\n".encode() + body


def exchange(server: Any, data: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes and read the answer to its end: (status, headers, JSON body or None).
    The socket stays open for writing, as a client that has more to send would keep it."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert headers.get("content-type", "").startswith("application/json"), (lines[0], body[:200])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


@pytest.fixture
def limited(realigner, tmp_path):
    """A server with given limits: ``with limited(queue=1) as s: ...``."""

    def start(**limits: Any) -> Any:
        return serving(realigner, tmp_path / "corrections.jsonl", limits=Limits(**limits))

    return start


# ---------------------------------------------------------------- load


def test_a_burst_of_64_connections_waits_in_the_listen_backlog(realigner, tmp_path):
    """64 clients connect while the server is not accepting: with the standard library's backlog
    of 5 the kernel drops the rest (their connect() waits a second for a SYN resend, or fails)."""
    server = make_server(realigner, "127.0.0.1", 0, tmp_path / "c.jsonl", quiet=True)
    data = http_request("POST", "/api/apply", json.dumps({"source": SOURCE, "chain": []}).encode())
    start, connected = threading.Barrier(64), threading.Semaphore(0)
    connect_s: list[float] = []
    answers: list[int] = []

    def client() -> None:
        start.wait()
        t0 = time.monotonic()
        with socket.create_connection(server.server_address[:2], timeout=30) as s:
            connect_s.append(time.monotonic() - t0)
            connected.release()
            s.sendall(data)
            answers.append(int(s.recv(64).split()[1]))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for _ in threads:  # all connected, none accepted yet
        assert connected.acquire(timeout=30)
    serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serve.start()
    for t in threads:
        t.join()
    server.shutdown()
    server.server_close()
    assert max(connect_s) < 0.5 and answers == [200] * 64


def test_a_burst_of_64_clients_gets_answers_not_resets(limited, tmp_path):
    """64 clients connect at once (realign, apply, save): each gets a JSON answer, 200 or a 503
    with Retry-After; every acknowledged save is in the file."""
    chain = test_server.hand_chain()
    bodies = [("/api/realign", {"context": CONTEXT, "source": SOURCE})] * 16
    bodies += [("/api/apply", {"source": SOURCE, "chain": chain, "keep": [k % 2 == 0 for k in range(len(chain))]})] * 24
    bodies += [("/api/save", {"source": f"text {k}", "target": f"fixed {k}"}) for k in range(24)]
    start = threading.Barrier(len(bodies))
    answers: list[tuple[str, int, dict[str, str], Any]] = []
    failures: list[str] = []

    def client(path: str, body: dict[str, Any]) -> None:
        start.wait()
        try:
            answers.append((path, *exchange(server, http_request("POST", path, json.dumps(body).encode()), timeout=60)))
        except OSError as e:
            failures.append(f"{path}: {type(e).__name__}: {e}")

    with limited() as server:
        threads = [threading.Thread(target=client, args=pb) for pb in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [] and len(answers) == len(bodies)
    for path, status, headers, body in answers:
        assert status in (200, 503), (path, status, body)
        if status == 503:
            assert path == "/api/realign" and int(headers["retry-after"]) >= 1 and "busy" in body["error"]
    saved = {json.loads(line)["target"] for line in (tmp_path / "corrections.jsonl").read_text().splitlines()}
    acked = {f"fixed {k}" for k in range(24)}  # every save was answered 200 (asserted above)
    assert saved == acked


def test_requests_beyond_the_queue_get_a_fast_503(limited):
    with limited(queue=1) as server:
        gate = server.api.gate
        results: list[tuple[int, Any]] = []
        with gate.hold(0):  # the model is busy
            waiter = threading.Thread(target=lambda: results.append(post(server, "/api/realign", {"source": SOURCE})))
            waiter.start()
            wait_until(lambda: gate.waiting == 1)
            t0 = time.monotonic()
            status, headers, err = exchange(server, http_request("POST", "/api/realign", json.dumps({"source": SOURCE}).encode()))
            assert status == 503 and time.monotonic() - t0 < 2
            assert int(headers["retry-after"]) >= 1 and "the model is busy" in err["error"]
            # what needs no model is answered while it is busy
            assert post(server, "/api/apply", {"source": SOURCE, "chain": []})[0] == 200
        waiter.join()
        assert results[0][0] == 200  # the one that waited is served


def test_a_request_waits_for_the_model_at_most_one_time_budget(limited):
    with limited(time_budget=0.5) as server, server.api.gate.hold(0):
        t0 = time.monotonic()
        status, headers, err = exchange(server, http_request("POST", "/api/realign", json.dumps({"source": SOURCE}).encode()))
        assert status == 503 and "stayed busy for 0.5 s" in err["error"] and int(headers["retry-after"]) >= 1
        assert 0.5 <= time.monotonic() - t0 < 3


def test_connections_beyond_the_limit_get_a_fast_503(limited):
    with limited(max_connections=2, read_timeout=5) as server:
        idle = [socket.create_connection(server.server_address[:2]) for _ in range(2)]  # say nothing: they hold a thread each
        try:
            wait_until(lambda: server.connections == 2)
            t0 = time.monotonic()
            status, headers, err = exchange(server, http_request("GET", "/api/health"))
            assert status == 503 and headers["retry-after"] == "1" and "2 connections" in err["error"] and time.monotonic() - t0 < 2
        finally:
            for s in idle:
                s.close()
        wait_until(lambda: server.connections == 0)
        assert request(server, "GET", "/api/health")[0] == 200


def test_a_small_request_waits_behind_the_running_one_only(limited):
    """Waiting requests are served shortest source first: a short one that arrives behind a
    long one overtakes it."""
    done: dict[str, float] = {}

    def ask(name: str, source: str) -> None:
        status, res = post(server, "/api/realign", {"source": source})
        assert status == 200, res
        done[name] = time.monotonic()

    with limited(queue=4) as server:
        gate = server.api.gate
        with gate.hold(0):
            long = threading.Thread(target=ask, args=("long", LONG_SOURCE))
            long.start()
            wait_until(lambda: gate.waiting == 1)
            short = threading.Thread(target=ask, args=("short", "Tom hits him."))
            short.start()
            wait_until(lambda: gate.waiting == 2)
        long.join()
        short.join()
    assert done["short"] < done["long"]


# ---------------------------------------------------------------- work limits


def test_a_source_longer_than_the_training_length_is_413_at_once(server_default):
    t0 = time.monotonic()
    for path, extra in (("/api/realign", {}), ("/api/continue", {"prefix": 'delete "word"'})):
        status, err = post(server_default, path, {"context": CONTEXT, "source": "word " * 5000, **extra})
        assert status == 413 and "field 'source'" in err["error"] and "training length of 128 tokens" in err["error"], err
    assert time.monotonic() - t0 < 5
    cap = server_default.api.max_source_tokens
    assert 20 < cap < 64  # (128 - 16) / 2 less the prompt's markers
    _, health, _ = request(server_default, "GET", "/api/health")
    assert health["limits"]["max_source_tokens"] == cap


@pytest.fixture
def server_default(realigner, tmp_path):
    with serving(realigner, tmp_path / "corrections.jsonl") as s:
        yield s


def test_the_source_cap_and_token_budget_are_flags(limited):
    with limited(max_source_tokens=5) as server:
        status, err = post(server, "/api/realign", {"source": SOURCE})
        assert status == 413 and "over the 5 this server takes (serve --max-source-tokens)" in err["error"]
    with limited(max_new_tokens=20) as server:
        status, err = post(server, "/api/realign", {"source": SOURCE})
        assert status == 422 and "over this server's budget of 20" in err["error"] and "--max-new-tokens" in err["error"]


def test_the_time_budget_ends_a_generation_with_422(limited):
    with limited(time_budget=1e-6) as server:
        t0 = time.monotonic()
        status, err = post(server, "/api/realign", {"source": SOURCE})
        assert status == 422 and "time budget of 1e-06 s" in err["error"] and time.monotonic() - t0 < 5
    with limited() as server:  # the model is left as it was: the next server re-aligns
        status, res = post(server, "/api/realign", {"source": SOURCE})
        assert status == 200 and res["valid"] and len(res["edits"]) >= 2


# ---------------------------------------------------------------- slow and broken requests


@pytest.mark.parametrize(
    "data",
    [
        http_request("POST", "/api/save", b'{"source": "a",', {"Content-Length": "50"}),  # less than announced
        b"POST /api/save HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Le",  # headers never end
    ],
    ids=["body", "headers"],
)
def test_a_request_that_does_not_arrive_gets_408_quickly(limited, data):
    with limited(read_timeout=0.5) as server:
        t0 = time.monotonic()
        status, _, err = exchange(server, data)
        assert status == 408 and "0.5 s" in err["error"] and time.monotonic() - t0 < 3
        assert not server.api.corrections.exists()


@pytest.mark.parametrize("length", ["²", "١٢", "-1", "+5", "1e3", "0x10", "5 5", ""])
def test_a_content_length_that_is_not_ascii_digits_is_400(server_default, length):
    data = f"POST /api/save HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
    status, _, err = exchange(server_default, data)
    assert status in (400, 411) and "Content-Length" in err["error"]


def test_conflicting_lengths_and_chunked_bodies_are_refused(server_default):
    twice = b'POST /api/save HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}'
    assert exchange(server_default, twice)[0] == 400
    chunked = http_request("POST", "/api/save", b"", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}) + b"2\r\n{}\r\n0\r\n\r\n"
    status, _, err = exchange(server_default, chunked)
    assert status == 411 and "Content-Length" in err["error"]


def test_an_error_before_the_body_is_read_arrives_whole(server_default):
    """A 413 answered before a large body is read: closing with the body unread used to reset
    the connection and cut the answer short."""
    body = json.dumps({"source": "x" * (300 * 1024)}).encode()
    for _ in range(3):
        status, _, err = exchange(server_default, http_request("POST", "/api/realign", body))
        assert status == 413 and err["error"].endswith("shorten the text")


# ---------------------------------------------------------------- hostile JSON


SURROGATE_BODIES = [
    ("/api/realign", '{"source": "Tom \\ud800 hits"}', "field 'source'"),
    ("/api/realign", '{"source": "Tom hits.", "context": "\\udfff"}', "field 'context'"),
    ("/api/continue", '{"source": "Tom hits.", "prefix": "delete \\"\\ud800\\""}', "field 'prefix'"),
    ("/api/save", '{"source": "a\\ud800", "target": "b"}', "field 'source'"),
    ("/api/save", '{"source": "a", "target": "\\udc00b"}', "field 'target'"),
    ("/api/save", '{"source": "a", "target": "b", "context": "\\ud83d"}', "field 'context'"),
    ("/api/apply", '{"source": "a \\ud800"}', "field 'source'"),
    ("/api/apply", '{"source": "a b", "chain": "delete \\"\\ud800\\""}', "field 'chain'"),
    ("/api/apply", '{"source": "a b", "chain": [{"readable": "delete \\"\\ud800\\""}]}', "field 'chain'"),
    ("/api/apply", '{"source": "a b", "chain": [{"op": "delete", "start": 0, "old": ["\\ud800"]}]}', "field 'chain'"),
    ("/api/apply", '{"source": "a b", "chain": [], "add": "delete \\"\\udbff\\""}', "field 'add'"),
    ("/api/save", '{"source": "a", "target": "b", "\\ud800": 1}', "a key"),
]


@pytest.mark.parametrize("path, body, where", SURROGATE_BODIES)
def test_lone_surrogates_are_400_naming_the_field(server_default, path, body, where):
    status, _, err = exchange(server_default, http_request("POST", path, body.encode()))
    assert status == 400 and where in err["error"] and "lone surrogate" in err["error"], err
    assert not server_default.api.corrections.exists()


@pytest.mark.parametrize("depth", [20, 30_000])
def test_deeply_nested_json_is_400(server_default, depth):
    body = '{"source": "a b", "chain": ' + "[" * depth + "]" * depth + "}"
    status, _, err = exchange(server_default, http_request("POST", "/api/apply", body.encode()))
    assert status == 400 and "nested deeper than" in err["error"], err


@pytest.mark.parametrize(
    "body",
    ['{"source": "a b", "chain": [{"op": "delete", "start": 0, "old": [{"x": 1}]}]}', '{"source": "a b", "chain": [{"op": "delete", "start": 1e400, "old": ["a"]}]}',
     '{"source": "a b", "chain": [{"op": "delete", "start": ' + "9" * 5000 + ', "old": ["a"]}]}', '{"source": "a b", "chain": [{"op": 5, "start": 0}]}'],
    ids=["token-object", "start-inf", "start-huge", "op-number"],
)
def test_malformed_edit_records_are_400(server_default, body):
    status, _, err = exchange(server_default, http_request("POST", "/api/apply", body.encode()))
    assert status == 400, err


# ---------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "method, path, status",
    [("PUT", "/api/save", 405), ("DELETE", "/api/save", 405), ("PATCH", "/", 405), ("OPTIONS", "/api/realign", 405),
     ("FOO", "/", 501), ("PROPFIND", "/api/health", 501), ("PUT", "/nowhere", 404)],
)
def test_unsupported_methods_answer_in_json(server_default, method, path, status):
    got, headers, err = exchange(server_default, http_request(method, path))
    assert got == status and (method in err["error"] or path in err["error"]), err
    if status == 405:
        assert headers["allow"] in ("GET", "POST")


def test_malformed_request_lines_answer_in_json(server_default):
    assert exchange(server_default, b"GET / HTTP/9.9\r\n\r\n")[0] == 505
    assert exchange(server_default, b"GET\r\n\r\n")[0] == 400
    assert exchange(server_default, b"GET /nowhere\r\n\r\n")[0] == 404  # HTTP/0.9 asked, HTTP/1.0 answered
    assert exchange(server_default, b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n")[0] == 431


# ---------------------------------------------------------------- corrections


def test_a_corrections_path_no_save_could_use_is_refused_at_start(realigner, memorized_run, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "file.jsonl"
    a_file.write_text("")
    for path, words in ((folder, "is a directory"), (a_file / "corrections.jsonl", "is a file, not a folder")):
        with pytest.raises(ValueError, match=words):
            make_server(realigner, "127.0.0.1", 0, path, quiet=True)
        t0 = time.monotonic()
        assert main(["serve", "--model", str(memorized_run), "--port", "0", "--corrections", str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert words in err and err.startswith("error:") and "\n" not in err and time.monotonic() - t0 < 30


@pytest.mark.parametrize("target", [SOURCE, f"  {SOURCE}", SOURCE.replace(" ", "  ")])
def test_a_correction_that_changes_nothing_is_refused_like_prepare_does(server_default, tmp_path, target):
    status, err = post(server_default, "/api/save", {"context": CONTEXT, "source": SOURCE, "target": target})
    assert status == 422 and "field 'target': identical to the source" in err["error"]
    assert not server_default.api.corrections.exists()
    # the same rule as prepare's: the row the server refused, prepare refuses too
    row = tmp_path / "row.jsonl"
    row.write_text(json.dumps({"context": CONTEXT, "source": SOURCE, "target": target}) + "\n")
    with pytest.raises(DataError, match="field 'target': identical to the source"):
        read_dataset("jsonl", row)
    assert post(server_default, "/api/save", {"source": SOURCE, "target": TARGET})[0] == 200


def test_health_reports_the_limits(server_default):
    _, health, _ = request(server_default, "GET", "/api/health")
    assert health["limits"] == {**Limits().__dict__, "max_source_tokens": server_default.api.max_source_tokens}
