"""The web editor's HTTP API, against a real server on 127.0.0.1 with a tiny trained model.

The model is a tiny Llama fully fine-tuned on one pair until it has memorized its chain
(``memorized_run``), so that re-aligning that pair gives a few real edits to accept, reject,
rewrite and continue from. ``test_web_e2e.py`` uses the same fixtures.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secondthoughts.cli import main
from secondthoughts.data import Example, read_examples, write_examples
from secondthoughts.edits import infer_text_edits
from secondthoughts.readable import apply_subset
from secondthoughts.realign import Realigner
from secondthoughts.server import MAX_BODY, EditorServer, make_server

CONTEXT = "Be kind to family."
SOURCE = "Tom hits his brother and yells at him."
TARGET = "Tom talks to his brother and listens to him."


@pytest.fixture(scope="session")
def memorized_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run that has memorized SOURCE -> TARGET (about 5 s on one CPU core). Built once per
    session at a fixed path, so that a second module importing this fixture reuses it."""
    from secondthoughts.sft import TrainConfig, train

    out = tmp_path_factory.getbasetemp() / "memorized-run"
    if not (out / "README.md").is_file():  # the card is written last
        data = out.parent / "memorized.jsonl"
        write_examples(data, [Example(CONTEXT, SOURCE, TARGET, f"m{k}") for k in range(8)])
        # Full fine-tuning at a high constant rate: the loss falls below 0.1 in 40 steps.
        train(TrainConfig(
            data=str(data), model=str(tiny_model_dir), out=str(out), full=True, lr=1e-2, max_steps=40,
            scheduler="constant_with_warmup", warmup_ratio=0.0, cost_sets=[[1, 1, 2]], max_length=128,
            batch_size=2, eval_fraction=0.0, log_every=40, progress=False, merge_gap=-1,  # the paper's chains: several edits to show
        ))
    return out


@pytest.fixture(scope="session")
def realigner(memorized_run: Path) -> Realigner:
    return Realigner(memorized_run)


@contextlib.contextmanager
def serving(realigner: Any, corrections: Path, **kw: Any) -> Iterator[EditorServer]:
    server = make_server(realigner, "127.0.0.1", 0, corrections, quiet=True, **kw)
    # a short poll: shutdown() waits for it, once per test
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def server(realigner: Realigner, tmp_path: Path) -> Iterator[EditorServer]:
    with serving(realigner, tmp_path / "corrections.jsonl") as s:
        yield s


def request(server: EditorServer, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
    """(status, decoded JSON or text, response). ``body`` is sent as JSON; ``raw`` as is."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    res = conn.getresponse()
    payload = res.read().decode()
    conn.close()
    is_json = res.getheader("Content-Type", "").startswith("application/json")
    return res.status, json.loads(payload) if is_json else payload, res


def post(server: EditorServer, path: str, body: Any) -> tuple[int, Any]:
    status, data, _ = request(server, "POST", path, body)
    return status, data


def hand_chain() -> list[dict[str, Any]]:
    """SOURCE -> TARGET as edit records, without the model."""
    return [e.to_dict() for e in infer_text_edits(SOURCE, TARGET)]


# ---------------------------------------------------------------- pages and health


def test_health_and_static_files(server):
    status, health, _ = request(server, "GET", "/api/health")
    assert status == 200 and health["ok"] and health["mode"] == "apply"
    assert health["model"].endswith("memorized-run") and health["corrections"].endswith("corrections.jsonl")
    status, page, res = request(server, "GET", "/")
    assert status == 200 and res.getheader("Content-Type").startswith("text/html") and 'src="app.js"' in page
    assert "default-src 'self'" in res.getheader("Content-Security-Policy")
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, _, res = request(server, "GET", path)
        assert status == 200 and res.getheader("Content-Type").startswith(kind)
    assert request(server, "GET", "/favicon.ico")[0] == 204
    status, err, _ = request(server, "GET", "/../server.py")
    assert status == 404 and "no such page" in err["error"]


# ---------------------------------------------------------------- the endpoints


def test_realign_returns_edits_and_an_inline_diff(server):
    status, res = post(server, "/api/realign", {"context": CONTEXT, "source": SOURCE})
    assert status == 200, res
    assert res["valid"] and res["source"] == SOURCE and res["prefix_edits"] == 0
    edits = res["edits"]
    assert len(edits) >= 2, f"the memorized model should write SOURCE's chain, got {res['readable']!r}"
    assert [e["readable"] for e in edits] == res["readable"].splitlines()
    assert [{k: e[k] for k in ("op", "start", "old", "new")} for e in edits] == res["chain"]
    assert all(e["old_text"] == "".join(e["old"]) and e["end"] == e["start"] + len(e["old"]) for e in edits)
    assert res["keep"] == [True] * len(edits)
    # the segments are the diff: without insertions they spell the source, without deletions the text
    segs = res["segments"]
    assert "".join(s["text"] for s in segs if s["kind"] != "ins") == SOURCE
    assert "".join(s["text"] for s in segs if s["kind"] != "del") == res["text"]
    assert {s["edit"] for s in segs if s["kind"] != "same"} == set(range(len(edits)))


def test_apply_rejects_and_rewrites_edits(server):
    chain = hand_chain()
    keep = [True] * len(chain)
    keep[0] = False
    status, view = post(server, "/api/apply", {"source": SOURCE, "chain": chain, "keep": keep})
    assert status == 200, view
    assert view["text"] == apply_subset(SOURCE, [e for e in infer_text_edits(SOURCE, TARGET)], keep)
    assert view["segments"][1] == {"kind": "off", "text": " hits", "edit": 0}  # rejected, still shown
    assert view["keep"] == keep
    # the first edit rewritten as a readable line; the others kept as records
    rewritten = [{"readable": 'replace "hits" with "hugs"'}] + chain[1:]
    status, view = post(server, "/api/apply", {"source": SOURCE, "chain": rewritten})
    assert status == 200, view
    assert view["edits"][0]["new"] == [" hugs"] and view["edits"][0]["readable"] == 'replace "hits" with "hugs"'
    assert view["text"].startswith("Tom hugs") and view["text"].endswith("listens to him.")
    # a chain may also come as one readable or compact string
    status, view = post(server, "/api/apply", {"source": SOURCE, "chain": 'delete "and yells at him"'})
    assert status == 200 and view["text"] == "Tom hits his brother."


def test_apply_adds_an_edit_in_source_order(server):
    chain = hand_chain()
    status, view = post(server, "/api/apply", {"source": SOURCE, "chain": chain[-1:], "add": 'replace "Tom" with "Sam"'})
    assert status == 200, view
    assert view["text"].startswith("Sam hits") and view["keep"] == [True, True] and view["edits"][0]["start"] == 0
    # an accepted edit in the way is refused; a rejected one gives way
    status, err = post(server, "/api/apply", {"source": SOURCE, "chain": chain, "add": 'delete "hits"'})
    assert status == 422 and "overlaps edit 1" in err["error"] and "reject" in err["error"]
    keep = [False] + [True] * (len(chain) - 1)
    status, view = post(server, "/api/apply", {"source": SOURCE, "chain": chain, "keep": keep, "add": 'delete "hits"'})
    assert status == 200, view
    assert view["edits"][0]["op"] == "delete" and view["keep"][0] is True and view["text"] == "Tom to his brother and listens to him."  # the insert after it stays
    # a replace that removes text is refused as a request error (it was a 500), naming the delete to write
    status, err = post(server, "/api/apply", {"source": SOURCE, "chain": [], "add": 'replace "Tom" with ""'})
    assert status == 422 and "replace with empty text" in err["error"] and 'delete "Tom"' in err["error"]


def test_continue_keeps_the_corrected_prefix(server):
    status, res = post(server, "/api/continue", {"context": CONTEXT, "source": SOURCE, "prefix": [{"readable": 'replace "hits" with "hugs"'}]})
    assert status == 200, res
    assert res["valid"] and res["prefix_edits"] == 1
    assert res["edits"][0]["new"] == [" hugs"] and res["text"].startswith("Tom hugs")
    # a prefix of edit records works the same
    first = hand_chain()[:1]
    status, res = post(server, "/api/continue", {"context": CONTEXT, "source": SOURCE, "prefix": first})
    assert status == 200 and res["prefix_edits"] == 1 and res["chain"][0] == first[0]


def test_save_appends_rows_that_read_examples_reads(server, tmp_path):
    path = tmp_path / "corrections.jsonl"
    assert post(server, "/api/save", {"context": CONTEXT, "source": SOURCE, "target": TARGET}) == (200, {"ok": True, "path": str(path)})
    # a line cut short by a crash must not swallow the next row (the cut line itself stays broken)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"context": "cut')
    threads = [threading.Thread(target=post, args=(server, "/api/save", {"source": f"text {k}", "target": f"fixed {k}"})) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == '{"context": "cut' and len(lines) == 8
    del lines[1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = list(read_examples(path))
    assert (rows[0].context, rows[0].source, rows[0].target) == (CONTEXT, SOURCE, TARGET)
    assert rows[0].meta["origin"] == "secondthoughts serve"
    assert sorted(r.target for r in rows[1:]) == [f"fixed {k}" for k in range(6)] and all(r.context == "" for r in rows[1:])


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/api/realign", {"context": "c"}, 400, "field 'source': missing"),
        ("/api/realign", {"source": 3}, 400, "field 'source': expected a string"),
        ("/api/realign", {"source": "  "}, 400, "field 'source': empty"),
        ("/api/realign", {"source": SOURCE, "context": ["x"]}, 400, "field 'context'"),
        ("/api/realign", [SOURCE], 400, "must be a JSON object"),
        ("/api/apply", {"source": SOURCE}, 400, "field 'chain': missing"),
        ("/api/apply", {"source": SOURCE, "chain": 5}, 400, "field 'chain': expected a list"),
        ("/api/apply", {"source": SOURCE, "chain": ["x"]}, 400, "field 'chain', edit 1: expected an object"),
        ("/api/apply", {"source": SOURCE, "chain": [{"op": "replace"}]}, 400, "field 'chain', edit 1"),
        ("/api/apply", {"source": SOURCE, "chain": [{"op": "delete", "start": 1, "old": [" his"]}]}, 422, "does not apply"),
        ("/api/apply", {"source": SOURCE, "chain": [{"readable": 'replace "cats" with "dogs"'}]}, 422, "'cats' not found"),
        ("/api/apply", {"source": SOURCE, "chain": [{"readable": "swap everything"}]}, 422, "cannot read"),
        ("/api/apply", {"source": SOURCE, "chain": [], "keep": [True]}, 400, "field 'keep': 1 flags for a chain of 0"),
        ("/api/apply", {"source": SOURCE, "chain": [], "keep": "yes"}, 400, "field 'keep'"),
        ("/api/continue", {"source": SOURCE}, 400, "field 'prefix': missing"),
        ("/api/continue", {"source": SOURCE, "prefix": 'delete "cats"'}, 422, "'cats' not found"),
        ("/api/save", {"source": SOURCE, "target": ""}, 400, "field 'target': empty"),
        ("/api/save", {"source": SOURCE}, 400, "field 'target': missing"),
        ("/api/nothing", {}, 404, "no endpoint /api/nothing"),
        ("/api/health", {}, 405, "takes GET"),
    ],
)
def test_bad_requests_get_a_status_and_a_message_naming_the_field(server, path, body, status, words):
    got, err = post(server, path, body)
    assert got == status and words in err["error"], err
    assert not (server.api.corrections).exists()


def test_transport_errors(server):
    big = json.dumps({"source": "x" * MAX_BODY}).encode()
    status, err, _ = request(server, "POST", "/api/realign", raw=big)
    assert status == 413 and "64 KiB" in err["error"]
    status, err, _ = request(server, "POST", "/api/realign", raw=b"{nope")
    assert status == 400 and "not valid JSON" in err["error"]
    status, err, _ = request(server, "POST", "/api/save", raw=b"source=x", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in err["error"]
    status, err, _ = request(server, "GET", "/api/realign")
    assert status == 405 and "POST" in err["error"]
    # what a web page elsewhere could make a browser send: refused before anything runs
    status, err, _ = request(server, "POST", "/api/save", {"source": "a", "target": "b"}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in err["error"]
    status, err, _ = request(server, "GET", "/api/health", headers={"Host": "evil.example:8000"})
    assert status == 403 and "localhost only" in err["error"]
    assert not server.api.corrections.exists()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition of the real system (a queue length, a file) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.005)


def test_model_calls_are_serialized(realigner, tmp_path):
    class Spy:
        """The real realigner, counting how many generations run at once."""

        def __init__(self) -> None:
            self.active = self.most = self.calls = 0
            self.guard = threading.Lock()
            self.server: EditorServer | None = None

        def __getattr__(self, name: str) -> Any:
            return getattr(realigner, name)

        def realign(self, *args: Any, **kw: Any) -> Any:
            with self.guard:
                self.active += 1
                self.calls += 1
                self.most = max(self.most, self.active)
                first = self.calls == 1
            if first:  # hold the model until the other three requests wait for it
                wait_until(lambda: self.server.api.gate.waiting == 3)
            try:
                return realigner.realign(*args, **kw)
            finally:
                with self.guard:
                    self.active -= 1

    spy = Spy()
    results: list[tuple[int, Any]] = []
    with serving(spy, tmp_path / "c.jsonl") as s:
        spy.server = s
        threads = [threading.Thread(target=lambda: results.append(post(s, "/api/realign", {"source": SOURCE}))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r[0] for r in results] == [200] * 4 and spy.most == 1
    assert len({r[1]["text"] for r in results}) == 1  # greedy: the same answer every time


# ---------------------------------------------------------------- the command


def test_serve_command_reports_a_busy_port_and_warns_off_localhost(memorized_run, realigner, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(memorized_run), "--port", str(port), "--corrections", str(tmp_path / "c.jsonl")]) == 1
    assert "error:" in capsys.readouterr().err
    server = make_server(realigner, "0.0.0.0", 0, tmp_path / "c.jsonl", quiet=True)
    server.server_close()
    assert "WARNING: serving on 0.0.0.0" in capsys.readouterr().err


def test_best_of_reranks_sampled_chains_with_any_scorer(realigner, tmp_path):
    """serve --best-of N --rerank ...: each request decodes the greedy chain and samples N more and
    returns the text the scorer likes best (here one that ranks texts alphabetically: the last one wins)."""
    from secondthoughts.coherence import Reranker

    seen: list[list[str]] = []

    def alphabetical(contexts: list[str], texts: list[str]) -> list[float]:
        seen.append(list(texts))
        order = sorted(set(texts))
        return [(order.index(t) + 1) / (len(order) + 1) for t in texts]

    settings = {"best_of": 6, "rerank": Reranker([alphabetical]), "temperature": 5.0, "seed": 0}
    with serving(realigner, tmp_path / "c.jsonl", settings=settings) as s:
        assert request(s, "GET", "/api/health")[1]["best_of"] == 6
        status, res = post(s, "/api/realign", {"context": CONTEXT, "source": SOURCE})
    assert status == 200 and len(seen) == 1 and 2 <= len(seen[0]) <= 7  # the greedy text and the samples', each once
    assert seen[0][0] == realigner.realign(CONTEXT, SOURCE).text  # the greedy chain is a candidate
    assert res["text"] == max(seen[0])


def test_serve_refuses_a_bad_best_of_before_loading(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "no-run"), "--best-of", "0", "--corrections", str(tmp_path / "c.jsonl")]) == 1
    assert "--best-of must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "no-run"), "--best-of", "4", "--rerank", str(tmp_path / "nothing"), "--corrections", str(tmp_path / "c.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nothing" in err and len(err.splitlines()) == 1
