"""Run folders under faults: verified checkpoints, the metrics log; then
tiny ``train`` and ``refine`` runs that are SIGKILLed at each stage of a checkpoint write, hit a
full disk, or find a torn metrics line, and must resume to exactly the uninterrupted run.

Faults come from the real writer through its hook (``SECONDTHOUGHTS_FAULT``, see
:mod:`secondthoughts.atomic`): a process kills itself with SIGKILL, or gets ENOSPC, at a chosen point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secondthoughts import atomic, runs
from secondthoughts.cli import main

HERE = Path(__file__).parent


# ---------------------------------------------------------------- checkpoints


def _checkpoint(out: Path, step: int) -> Path:
    ck = runs.CheckpointWriter(out)
    ck.begin()
    ck.add("weights.bin", lambda p: p.write_bytes(bytes([step]) * 100))
    ck.add("rng-0.pt", lambda p: p.write_bytes(b"rng"))
    return ck.commit({"state": {"step": step}, "world_size": 1})


def test_checkpoint_records_and_verifies_every_file(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, 1)
    meta = runs.read_checkpoint(path)
    assert meta["files"]["weights.bin"]["bytes"] == 100 and len(meta["files"]["weights.bin"]["sha256"]) == 64
    assert runs.verify_checkpoint(path) is None and runs.resume_checkpoint(tmp_path) == path
    _checkpoint(tmp_path, 2)
    assert runs.read_checkpoint(runs.resume_checkpoint(tmp_path))["state"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no .old or .tmp left

    (path / "weights.bin").write_bytes(b"\x02" * 99)  # cut short
    assert runs.verify_checkpoint(path) == "weights.bin has 99 bytes, 100 were written"
    (path / "weights.bin").write_bytes(b"\x03" * 100)  # same size, other bytes
    assert runs.verify_checkpoint(path) == "weights.bin differs from what was written (sha256)"
    (path / "rng-0.pt").unlink()
    assert runs.verify_checkpoint(path) == "rng-0.pt missing"
    with pytest.raises(runs.CheckpointError, match=r"no complete checkpoint to resume from: .*checkpoint: rng-0.pt missing"):
        runs.resume_checkpoint(tmp_path)
    (path / "state.json").write_text('{"state": {"st')
    assert runs.verify_checkpoint(path).startswith("state.json unreadable")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        runs.resume_checkpoint(tmp_path / "elsewhere")


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _checkpoint(tmp_path, 1)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    _checkpoint(tmp_path, 2)  # removes .checkpoint.old; bring it back as a crash between two renames would leave it
    shutil.copytree(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    atomic.write_atomic(tmp_path / ".checkpoint.old" / "state.json", json.dumps({**runs.read_checkpoint(tmp_path / "checkpoint"), "state": {"step": 1}}))
    (tmp_path / "checkpoint" / "weights.bin").write_bytes(b"")
    found = runs.resume_checkpoint(tmp_path)
    assert found.name == ".checkpoint.old" and "checkpoint: weights.bin has 0 bytes" in capsys.readouterr().err


def test_a_checkpoint_written_before_files_were_recorded_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"state": {"step": 50}, "world_size": 1}))
    assert runs.verify_checkpoint(tmp_path / "checkpoint") is None
    assert runs.run_start(tmp_path, resume=True) == tmp_path / "checkpoint"
    with pytest.raises(FileExistsError, match="--resume"):
        runs.run_start(tmp_path, resume=False)


# ---------------------------------------------------------------- metrics.jsonl


def test_metrics_log_tolerates_and_drops_a_torn_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        runs.append_jsonl(path, {"step": step, "loss": 1.0 / step})
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')
    log = runs.read_metrics(path)
    assert [r["step"] for r in log.rows] == [1, 2, 3] and log.torn == '{"step": 4, "lo'
    runs.truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    assert "dropped a torn last line (15 characters)" in capsys.readouterr().err
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object; the metrics log is damaged"):
        runs.read_metrics(path)


# ---------------------------------------------------------------- train: killed, disk full, torn log

TRAIN_FLAGS = {
    "max_length": 128, "batch_size": 1, "max_steps": 6, "eval_every": 3, "log_every": 1, "eval_fraction": 0.2,
    "lora_r": 4, "lora_dropout": 0.1, "checkpoint_every": 1, "progress": False,
}  # fmt: skip


def _train_config(out: Path, model_dir: Path, data: Path) -> Any:
    from secondthoughts.sft import TrainConfig

    return TrainConfig(data=str(data), model=str(model_dir), out=str(out), **TRAIN_FLAGS)


def _curve(out: Path, drop: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The metrics a resumed run must repeat exactly (timings left out)."""
    timing = {"tokens_per_s", "step_s", "elapsed_s", "samples_per_s", "rollout_s", "score_s", "update_s", "peak_memory_mb"} | drop
    return [{k: v for k, v in r.items() if k not in timing} for r in runs.read_metrics(out / "metrics.jsonl").rows]


def _same_model(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    x, y = load_file(a / "model" / "adapter_model.safetensors"), load_file(b / "model" / "adapter_model.safetensors")
    assert x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    from secondthoughts.sft import train

    return train(_train_config(tmp_path_factory.mktemp("ref") / "run", tiny_model_dir, examples_jsonl)).out


@pytest.fixture(scope="module")
def train_stopped(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    """A run stopped after step 4 (checkpoint at step 4); tests copy it before changing it."""
    from secondthoughts.sft import train

    return train(_train_config(tmp_path_factory.mktemp("stopped") / "run", tiny_model_dir, examples_jsonl), stop_after=4).out


def _copy_run(src: Path, tmp_path: Path) -> Path:
    """A copy of a stopped run, its config.json saying where it now is (resume checks --out)."""
    out = tmp_path / "run"
    shutil.copytree(src, out)
    info = json.loads((out / "config.json").read_text())
    info["train"]["out"] = str(out)
    atomic.write_atomic(out / "config.json", json.dumps(info, indent=2))
    return out


def _resume_train(out: Path, tiny_model_dir: Path, data: Path) -> Any:
    from secondthoughts.sft import train

    return train(_train_config(out, tiny_model_dir, data), resume=True)


def _cli(args: list[str], fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    env.pop(atomic.FAULT_ENV, None)
    if fault:
        env[atomic.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "secondthoughts", *args], env=env, capture_output=True, text=True, timeout=900)


def _flags(settings: dict[str, Any]) -> list[str]:
    out = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)  # five processes that each load torch: minutes on a busy machine
def test_train_killed_at_every_stage_of_a_checkpoint_resumes_exactly(
    tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path, train_reference: Path
) -> None:
    """One run SIGKILLed five times, each at another stage of writing a checkpoint or the model
    (6 steps, a checkpoint every step, 4 files each, evaluations at steps 3 and 6), then resumed:
    the same losses, evaluations and final model as the run that was never interrupted."""
    out = tmp_path / "run"
    start = ["train", "--data", str(examples_jsonl), "--model", str(tiny_model_dir), "--out", str(out), *_flags(TRAIN_FLAGS)]
    resume = ["train", "--out", str(out), "--resume"]
    kills = [
        (start, "kill@checkpoint-file:6"),  # the 2nd file of the step-2 checkpoint: step 1's stays
        (resume, "kill@swap-checkpoint:1"),  # between the two renames: only .checkpoint.old (step 1) is left
        (resume, "kill@swap-model:1"),  # the first best model, half swapped in (no model/ yet)
        (resume, "kill@checkpoint-state:1"),  # step 3's checkpoint complete, not yet renamed
        (resume, "kill@swapped-checkpoint:2"),  # step 4's renamed in, the old one not yet removed
    ]
    for argv, fault in kills:
        proc = _cli(argv, fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-3000:])
    assert (out / ".checkpoint.old").is_dir()
    result = _resume_train(out, tiny_model_dir, examples_jsonl)
    assert result.state.step == 6
    assert _curve(out) == _curve(train_reference)
    _same_model(out, train_reference)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_train_disk_full_during_a_checkpoint_then_resume(
    tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path, train_reference: Path,
    train_stopped: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: Any,
) -> None:  # fmt: skip
    """ENOSPC while writing the step-5 checkpoint: one error line, exit 1, the step-4 checkpoint
    intact and nothing half-written left; once there is space, the run resumes exactly."""
    out = _copy_run(train_stopped, tmp_path)
    fault("enospc@checkpoint-file:3")
    assert main(["train", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: checkpoint-file: No space left on device"
    assert not (out / ".checkpoint.tmp").exists()
    assert runs.read_checkpoint(runs.resume_checkpoint(out))["state"]["step"] == 4
    monkeypatch.delenv(atomic.FAULT_ENV)
    assert _resume_train(out, tiny_model_dir, examples_jsonl).state.step == 6
    assert _curve(out) == _curve(train_reference)


def test_train_resumes_past_a_torn_metrics_line(
    tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path, train_reference: Path, train_stopped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_run(train_stopped, tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "epoch": 0.26, "lo')  # a kill in the middle of an append
    assert _resume_train(out, tiny_model_dir, examples_jsonl).state.step == 6
    assert "dropped a torn last line" in capsys.readouterr().err
    assert _curve(out) == _curve(train_reference)


def test_train_resumes_a_checkpoint_written_before_hashes(
    tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path, train_reference: Path, train_stopped: Path
) -> None:
    """Checkpoints of runs started before this change (no "files" in state.json) still resume."""
    out = _copy_run(train_stopped, tmp_path)
    state = out / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    del meta["files"]
    state.write_text(json.dumps(meta))
    assert _resume_train(out, tiny_model_dir, examples_jsonl).state.step == 6
    assert _curve(out) == _curve(train_reference)


def test_train_refuses_a_damaged_checkpoint_in_one_line(tmp_path: Path, train_stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy_run(train_stopped, tmp_path)
    with open(out / "checkpoint" / "optimizer.pt", "r+b") as f:
        f.truncate(100)
    assert main(["train", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no complete checkpoint to resume from: ") and "optimizer.pt has 100 bytes" in err


# ---------------------------------------------------------------- refine: killed, disk full, torn log


def word_reward(contexts: list[str], texts: list[str]) -> list[float]:
    """A stand-in reward (importable as ``test_runs:word_reward`` by a refine subprocess)."""
    return [1.0 if "talk" in t else 0.2 + 0.01 * len(t) for t in texts]


REFINE_FLAGS = {
    "reward": "test_runs:word_reward", "steps": 4, "prompts_per_step": 2, "k": 2, "max_new_tokens": 16, "lr": 1e-2,
    "lora_r": 4, "lora_alpha": 8, "checkpoint_every": 1, "progress": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def aem(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    from secondthoughts.sft import TrainConfig, train

    cfg = TrainConfig(data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path_factory.mktemp("aem") / "aem"),
                      max_length=128, batch_size=4, max_steps=2, eval_fraction=0.0, lora_r=4, progress=False)  # fmt: skip
    return train(cfg).out


def _refine_config(out: Path, aem: Path, data: Path) -> Any:
    from secondthoughts.refine import RefineConfig

    return RefineConfig(policy=str(aem), data=str(data), out=str(out), **REFINE_FLAGS)


def _refine(out: Path, aem: Path, data: Path, **kw: Any) -> Any:
    from secondthoughts.refine import refine

    return refine(_refine_config(out, aem, data), word_reward, **kw)


@pytest.fixture(scope="module")
def refine_reference(tmp_path_factory: pytest.TempPathFactory, aem: Path, examples_jsonl: Path) -> Path:
    return _refine(tmp_path_factory.mktemp("rl-ref") / "rl", aem, examples_jsonl).out


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_refine_killed_during_checkpoints_resumes_exactly(tmp_path: Path, aem: Path, examples_jsonl: Path, refine_reference: Path) -> None:
    out = tmp_path / "rl"
    start = ["refine", "--policy", str(aem), "--data", str(examples_jsonl), "--out", str(out), *_flags(REFINE_FLAGS)]
    for argv, fault in [(start, "kill@checkpoint-file:6"), (["refine", "--out", str(out), "--resume"], "kill@swap-checkpoint:1")]:
        proc = _cli(argv, fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-3000:])
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").is_dir()
    assert _refine(out, aem, examples_jsonl, resume=True).state.step == 4
    assert _curve(out) == _curve(refine_reference)
    _same_model(out, refine_reference)


def test_refine_disk_full_and_torn_metrics_then_resume(
    tmp_path: Path, aem: Path, examples_jsonl: Path, refine_reference: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fault: Any,
) -> None:
    out = tmp_path / "rl"
    fault("enospc@checkpoint-file:7")  # the 3rd file of the step-2 checkpoint
    with pytest.raises(OSError) as e:
        _refine(out, aem, examples_jsonl)
    assert e.value.errno == errno.ENOSPC and not (out / ".checkpoint.tmp").exists()
    assert runs.read_checkpoint(runs.resume_checkpoint(out))["state"]["step"] == 1
    monkeypatch.delenv(atomic.FAULT_ENV)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    assert _refine(out, aem, examples_jsonl, resume=True).state.step == 4
    assert "dropped a torn last line" in capsys.readouterr().err
    assert _curve(out) == _curve(refine_reference)
