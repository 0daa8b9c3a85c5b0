"""Every HTTP endpoint of the editor, fuzzed with hypothesis: arbitrary bytes, arbitrary JSON
(lone surrogates, NaN, huge numbers, deep and wrong shapes) and arbitrary headers and paths, sent
over a real socket to a real server. The only answers allowed: 2xx or 4xx, in JSON (the static
pages excepted), never a 500 or a dropped connection.

The server runs an untrained tiny model (noise, kept to valid chains by the constraint) with a
small source cap, so that re-aligning stays fast.
"""

from __future__ import annotations

import json
import socket
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondthoughts.server import STATIC, EditorServer, Limits, make_server

SOURCE = "Tom hits his brother and yells at him."
WORDS = SOURCE.rstrip(".").split()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_server(untrained: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EditorServer]:
    import threading

    path = tmp_path_factory.mktemp("fuzz") / "corrections.jsonl"
    server = make_server(untrained, "127.0.0.1", 0, path, quiet=True, limits=Limits(max_source_tokens=12, time_budget=5))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def exchange(server: EditorServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(server.server_address[:2], timeout=60) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw, "the server closed the connection without an answer"
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, body


def post(server: EditorServer, path: str, body: bytes, headers: dict[str, bytes] | None = None) -> tuple[int, Any]:
    hdrs = {b"Host": b"127.0.0.1", b"Content-Type": b"application/json", b"Content-Length": str(len(body)).encode()}
    hdrs.update({k.encode(): v for k, v in (headers or {}).items()})
    head = b"".join(k + b": " + v + b"\r\n" for k, v in hdrs.items())
    status, got, data = exchange(server, b"POST " + path.encode() + b" HTTP/1.0\r\n" + head + b"\r\n" + body)
    return status, check_json_answer(status, got, data)


def check_json_answer(status: int, headers: dict[str, str], data: bytes) -> Any:
    assert 200 <= status < 300 or 400 <= status < 500, (status, data[:300])
    assert headers["content-type"] == "application/json; charset=utf-8"
    payload = json.loads(data.decode("utf-8"))
    if status >= 400:
        assert isinstance(payload["error"], str) and payload["error"]
    return payload


# ---------------------------------------------------------------- strategies

# any code point, lone surrogates included (json.dumps escapes them as \ud800)
any_text = st.text(st.characters(exclude_categories=[]), max_size=20)
texty = st.one_of(any_text, st.sampled_from(["", " ", SOURCE, *WORDS, "Tom  hits", "<|eoc|>", "<|del|> hits", "\n"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(), texty,
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texty, inner, max_size=4), max_leaves=10)
readable_lines = st.builds(
    lambda op, a, b: {"replace": f'replace "{a}" with "{b}"', "delete": f'delete "{a}"', "insert": f'insert "{b}" after "{a}"'}[op],
    st.sampled_from(["replace", "delete", "insert"]), st.sampled_from(WORDS) | any_text, texty,
)
edit_records = st.fixed_dictionaries(
    {}, optional={"op": st.sampled_from(["replace", "delete", "insert"]) | json_values, "start": st.integers(-2, 12) | json_values,
                  "old": st.lists(st.sampled_from([f" {w}" for w in WORDS]) | texty, max_size=3) | json_values,
                  "new": st.lists(texty, max_size=3) | json_values, "readable": readable_lines | json_values},
)
chains = st.one_of(st.lists(edit_records | readable_lines.map(lambda r: {"readable": r}), max_size=4), readable_lines, json_values)


def bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """Objects with the endpoint's fields (each maybe missing, maybe any JSON) and stray keys,
    as JSON text; or any JSON; or any bytes."""
    shaped = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})
    objects = st.builds(lambda d, extra: {**extra, **d}, shaped, st.dictionaries(texty, json_values, max_size=2))
    return st.one_of(
        objects.map(lambda d: json.dumps(d).encode()),
        objects.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),  # raw surrogate bytes: not UTF-8
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
    )


ENDPOINTS = {
    "/api/realign": {"context": texty, "source": texty, "prefix": chains},
    "/api/continue": {"context": texty, "source": texty, "prefix": chains},
    "/api/apply": {"source": texty, "chain": chains, "keep": st.lists(st.booleans(), max_size=4) | json_values, "add": readable_lines | json_values},
    "/api/save": {"context": texty, "source": texty, "target": texty},
}


# ---------------------------------------------------------------- the endpoints


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_api_endpoints_answer_any_body_with_2xx_or_4xx_in_json(fuzz_server, path):
    @FUZZ
    @given(body=bodies(ENDPOINTS[path]))
    def check(body: bytes) -> None:
        status, payload = post(fuzz_server, path, body)
        if status == 200 and path == "/api/save":
            assert payload == {"ok": True, "path": str(fuzz_server.api.corrections)}

    check()


header_values = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@FUZZ
@given(
    path=st.sampled_from([*ENDPOINTS, "/api/health", "/", "/nowhere"]),
    headers=st.fixed_dictionaries({}, optional={"Content-Length": header_values | st.integers(0, 10**6).map(lambda n: str(n).encode()),
                                                "Content-Type": header_values | st.just(b"application/json; charset=utf-8"),
                                                "Host": header_values, "Origin": header_values, "Transfer-Encoding": header_values}),
    body=st.binary(max_size=100),
)
def test_post_with_any_headers_answers_in_json(fuzz_server, path, headers, body):
    post(fuzz_server, path, body, headers)


@FUZZ
@given(path=st.text(st.characters(min_codepoint=33, max_codepoint=0x10FFFF, exclude_categories=["Cs", "Zl", "Zp", "Cc"]), max_size=30),
       query=st.text(string.printable.strip(), max_size=10))
def test_get_of_any_path_answers_in_json_or_serves_a_page(fuzz_server, path, query):
    target = f"/{path}?{query}".encode("utf-8").replace(b" ", b"%20")
    status, headers, data = exchange(fuzz_server, b"GET " + target + b" HTTP/1.0\r\nHost: localhost\r\n\r\n")
    asked = "/" + target.decode("latin-1").lstrip("/")  # http.server collapses leading slashes ("//?" is "/?")
    if status == 200 and urlsplit(asked).path in STATIC:  # "/#x" is the page too
        assert headers["content-type"].startswith(("text/html", "text/javascript", "text/css"))
    elif status != 204:  # /favicon.ico
        check_json_answer(status, headers, data)
