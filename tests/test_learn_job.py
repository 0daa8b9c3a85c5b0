"""The editor learns from its saved corrections in the background and switches models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import test_server
from test_server import CONTEXT, SOURCE, TARGET, post, request, serving

from secondthoughts.learn_job import LearnJob, last_error, next_free

memorized_run = test_server.memorized_run
realigner = test_server.realigner

FAST = ["--max-steps", "2"]  # the tiny run learns in seconds; the process start dominates


def wait_until_settled(server, timeout: float = 180.0) -> dict:
    """Poll GET /api/learn until the job has finished (done or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, st, _ = request(server, "GET", "/api/learn")
        assert status == 200
        if st["state"] in ("done", "failed"):
            return st
        time.sleep(0.2)
    raise AssertionError(f"learning did not finish within {timeout} s: {st}")


def test_next_free_and_last_error(tmp_path):
    (tmp_path / "learned-1").mkdir()
    assert next_free(tmp_path / "learned") == tmp_path / "learned-2"
    log = tmp_path / "x.log"
    log.write_text("Loading...\nerror: corr.jsonl:3: field 'target': missing\n")
    assert last_error(log) == "corr.jsonl:3: field 'target': missing"
    assert last_error(tmp_path / "none.log") is None


@pytest.mark.slow
def test_learn_from_saved_corrections_then_switch_back(realigner, memorized_run, tmp_path):
    corrections = tmp_path / "corrections.jsonl"
    job = LearnJob(tmp_path / "runs" / "learned", FAST)
    with serving(realigner, corrections, learn=job) as server:
        status, health, _ = request(server, "GET", "/api/health")
        assert health["learn"] and health["runs"] == [str(memorized_run)]
        assert request(server, "GET", "/api/learn")[1]["state"] == "idle"
        status, err = post(server, "/api/learn", {})
        assert status == 422 and "no corrections saved yet" in err["error"]

        assert post(server, "/api/save", {"context": CONTEXT, "source": SOURCE, "target": TARGET})[0] == 200
        status, st = post(server, "/api/learn", {})
        assert status == 200 and st["state"] == "running" and st["out"] == str(tmp_path / "runs" / "learned-1")
        status, err = post(server, "/api/learn", {})
        assert status == 409 and "already running" in err["error"]
        status, err = post(server, "/api/model", {"run": str(memorized_run)})
        assert status == 409
        # the model keeps answering while it learns
        assert post(server, "/api/realign", {"context": CONTEXT, "source": SOURCE})[0] == 200

        st = wait_until_settled(server)
        assert st["state"] == "done", st
        learned = str(tmp_path / "runs" / "learned-1")
        assert st["model"] == learned and st["runs"] == [str(memorized_run), learned]
        info = json.loads((Path(learned) / "learn.json").read_text())
        # the run's training data holds only the corrected pair itself: nothing else to replay
        assert info["corrections"] == 1 and info["replay"] == 0 and info["learn"]["model"] == str(memorized_run)
        status, res = post(server, "/api/realign", {"context": CONTEXT, "source": SOURCE})
        assert status == 200 and request(server, "GET", "/api/health")[1]["model"] == learned

        status, err = post(server, "/api/model", {"run": "/somewhere/else"})
        assert status == 422 and "field 'run'" in err["error"]
        # a second run learns only what was saved since the first
        status, err = post(server, "/api/learn", {})
        assert status == 422 and "since the last learning run" in err["error"]
        assert post(server, "/api/save", {"context": "", "source": "Tom yells.", "target": "Tom talks."})[0] == 200
        assert post(server, "/api/learn", {})[0] == 200
        assert wait_until_settled(server)["state"] == "done"
        second = tmp_path / "runs" / "learned-2"
        assert [json.loads(r)["source"] for r in (second / "learn-data.jsonl").read_text().splitlines()][:1] == ["Tom yells."]
        assert json.loads((second / "learn.json").read_text())["learn"]["model"] == learned  # on top of the first

        status, st = post(server, "/api/model", {"run": str(memorized_run)})
        assert status == 200 and st["model"] == str(memorized_run) and len(st["runs"]) == 3
        assert post(server, "/api/realign", {"context": CONTEXT, "source": SOURCE})[1]["text"] == TARGET


@pytest.mark.slow
def test_a_failed_learning_run_says_why_and_keeps_the_model(realigner, memorized_run, tmp_path):
    corrections = tmp_path / "corrections.jsonl"
    job = LearnJob(tmp_path / "learned", ["--replay-data", str(tmp_path / "missing.jsonl"), *FAST])
    with serving(realigner, corrections, learn=job) as server:
        assert post(server, "/api/save", {"context": CONTEXT, "source": SOURCE, "target": TARGET})[0] == 200
        assert post(server, "/api/learn", {})[0] == 200
        st = wait_until_settled(server)
        assert st["state"] == "failed" and "missing.jsonl" in st["message"] and "\n" not in st["message"]
        assert st["model"] == str(memorized_run) and st["runs"] == [str(memorized_run)]


def test_learning_off(realigner, tmp_path):
    with serving(realigner, tmp_path / "c.jsonl") as server:
        assert request(server, "GET", "/api/health")[1]["learn"] is False
        assert request(server, "GET", "/api/learn")[1]["state"] == "off"
        status, err = post(server, "/api/learn", {})
        assert status == 501 and "learning is off" in err["error"]
        status, _, res = request(server, "PUT", "/api/learn")
        assert status == 405 and res.getheader("Allow") == "GET, POST"
