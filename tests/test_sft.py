"""Training runs on a tiny model: run folder, exact resume, early stopping, config/CLI, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from secondthoughts import models
from secondthoughts.cli import build_parser, main
from secondthoughts.commands.train import config_from_args
from secondthoughts.data import Example
from secondthoughts.runs import find_checkpoint
from secondthoughts.sft import TrainConfig, hold_out, train


def _config(tmp_path: Path, model_dir: Path, data: Path, name: str = "run", **kw) -> TrainConfig:
    settings = {
        "data": str(data),
        "model": str(model_dir),
        "out": str(tmp_path / name),
        "max_length": 128,
        "batch_size": 2,
        "max_steps": 6,
        "eval_every": 2,
        "log_every": 1,
        "eval_fraction": 0.2,
        "lora_r": 4,
        "progress": False,
    }
    return TrainConfig(**{**settings, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_and_reload(tmp_path, tiny_model_dir, examples_jsonl):
    res = train(_config(tmp_path, tiny_model_dir, examples_jsonl))
    out = res.out
    assert res.state.step == 6 and res.state.best_eval is not None
    info = json.loads((out / "config.json").read_text())
    assert info["train"]["mode"] == "coe" and info["data"]["train_examples"] == 19 and info["data"]["eval_examples"] == 5
    rows = _metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4, 6]
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    assert (out / "model" / "adapter_model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert json.loads((out / "model" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert not list((out / "model").glob("*.bin")) and not list((out / "model").glob("*.pt"))
    card = (out / "README.md").read_text()
    assert "best eval loss" in card and "LoRA r=4" in card and "| batch_size | 2 |" in card
    assert "(loss.png)" in card and (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))  # no temp or old folders left

    model, tok = models.load(str(out))
    assert isinstance(model, PeftModel) and "<|sep|>" in tok.get_vocab()
    ids = tok("a<|src|>b<|sep|>", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    # the trained rows of the new tokens come back with the adapter, not the fresh init
    fresh, fresh_tok = models.load(str(tiny_model_dir))
    sep = models.add_edit_tokens(fresh, fresh_tok)[-1]
    trained_row = model.get_input_embeddings()(torch.tensor([sep]))[0]
    assert not torch.allclose(trained_row, fresh.get_input_embeddings().weight[sep])


def test_resume_continues_the_same_loss_curve(tmp_path, tiny_model_dir, examples_jsonl):
    # dropout on, so the RNG state matters; checkpoints every 2 steps, "killed" after step 5
    kw = {"max_steps": 8, "checkpoint_every": 2, "eval_every": 3, "lora_dropout": 0.1, "batch_size": 1}
    full = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "full", **kw))
    cfg = _config(tmp_path, tiny_model_dir, examples_jsonl, "killed", **kw)
    train(cfg, stop_after=5)
    assert json.loads((find_checkpoint(Path(cfg.out)) / "state.json").read_text())["state"]["step"] == 4
    resumed = train(cfg, resume=True)
    assert resumed.state.step == 8
    a, b = _metrics(full.out), _metrics(Path(cfg.out))
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in a] == [(r["step"], r.get("loss"), r.get("eval_loss")) for r in b]
    assert full.state.best_eval == resumed.state.best_eval


def test_cli_resume_finishes_a_killed_run(tmp_path, tiny_model_dir, examples_jsonl, capsys):
    cfg = _config(tmp_path, tiny_model_dir, examples_jsonl, max_steps=3, checkpoint_every=1, gradient_checkpointing=True)
    train(cfg, stop_after=1)
    assert not (Path(cfg.out) / "README.md").exists()  # a killed run has no card yet
    assert main(["train", "--out", cfg.out, "--resume"]) == 0
    assert "3/3 steps" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(Path(cfg.out)) if "loss" in r] == [1, 2, 3]
    assert (Path(cfg.out) / "README.md").is_file()


def test_resume_refuses_changed_settings_and_fresh_run_refuses_existing_folder(tmp_path, tiny_model_dir, examples_jsonl):
    cfg = _config(tmp_path, tiny_model_dir, examples_jsonl, max_steps=2)
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    changed = _config(tmp_path, tiny_model_dir, examples_jsonl, max_steps=2, batch_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        train(changed, resume=True)


def test_early_stopping_keeps_the_best_model(tmp_path, tiny_model_dir, examples_jsonl):
    # min_delta so large that no evaluation after the first counts as an improvement
    res = train(_config(tmp_path, tiny_model_dir, examples_jsonl, max_steps=40, eval_every=1, patience=2, min_delta=100.0))
    assert res.state.stopped_early and res.state.step == 3 and res.state.best_step == 1
    evals = [r for r in _metrics(res.out) if "eval_loss" in r]
    assert [r["best"] for r in evals] == [True, False, False]
    assert "stopped early" in (res.out / "README.md").read_text()


def test_direct_mode_and_full_finetuning(tmp_path, tiny_model_dir, examples_jsonl):
    res = train(_config(tmp_path, tiny_model_dir, examples_jsonl, mode="direct", full=True, max_steps=2, packing=False))
    model, tok = models.load(str(res.out))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert (res.out / "model" / "model.safetensors").is_file()


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, tiny_model_dir, examples_jsonl):
    kw = {"max_steps": 3, "eval_every": 3, "lora_dropout": 0.0}
    big = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "big", batch_size=2, **kw))
    accum = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "accum", batch_size=1, grad_accum=2, **kw))
    for a, b in zip(_metrics(big.out), _metrics(accum.out)):
        key = "loss" if "loss" in a else "eval_loss"
        assert a[key] == pytest.approx(b[key], rel=1e-5)


def test_rows_per_pass_keeps_the_batch_and_its_gradient(tmp_path, tiny_model_dir, examples_jsonl):
    kw = {"max_steps": 3, "eval_every": 3, "lora_dropout": 0.0, "batch_size": 4, "max_length": 64}
    whole = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "whole", rows_per_pass=0, **kw))
    split = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "split", rows_per_pass=1, **kw))
    a, b = _metrics(whole.out), _metrics(split.out)
    assert len(a) == len(b) and any("eval_loss" in r for r in a)
    for x, y in zip(a, b):
        key = "loss" if "loss" in x else "eval_loss"
        assert x[key] == pytest.approx(y[key], rel=1e-5)
    with pytest.raises(ValueError, match="rows_per_pass"):
        _config(tmp_path, tiny_model_dir, examples_jsonl, "bad", rows_per_pass=-1)


def test_hold_out_takes_whole_examples_deterministically():
    exs = [Example("", f"s{i}", f"t{i}", f"id{i}") for i in range(40)]
    train_part, eval_part = hold_out(exs, 0.1, 100, seed=3)
    assert (train_part, eval_part) == hold_out(list(reversed(exs)), 0.1, 100, seed=3)
    assert len(eval_part) == 4 and sorted(e.id for e in train_part + eval_part) == sorted(e.id for e in exs)
    assert len(hold_out(exs, 0.5, 3, seed=0)[1]) == 3
    no_eval = hold_out(exs, 0.0, 3, seed=0)
    assert len(no_eval[0]) == 40 and no_eval[1] == []


def test_cli_flags_override_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"batch_size": 4, "lr": 1e-3, "mode": "direct", "packing": False, "cost_sets": [[1, 1, 2]]}))
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--batch-size", "2", "--data", "x.jsonl", "--cost-sets", "1,1,2;1,1,3"]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    assert (cfg.batch_size, cfg.lr, cfg.mode, cfg.packing, cfg.data) == (2, 1e-3, "direct", False, "x.jsonl")
    assert cfg.cost_sets == [[1, 1, 2], [1, 1, 3]]
    argv = ["train", "--data", "x.jsonl", "--no-packing", "--full", "--mode", "coe"]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    assert (cfg.packing, cfg.full, cfg.batch_size, cfg.peak_lr) == (False, True, 8, 3e-5)
    with pytest.raises(SystemExit):
        build_parser(["train", "--mode", "x"]).parse_args(["train", "--mode", "x"])
    (tmp_path / "bad.yaml").write_text("bogus_setting: 1\n")
    with pytest.raises(ValueError, match="bogus_setting"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")


def test_a_train_or_refine_config_file_is_read_and_checked_as_the_flags_are(tmp_path):
    from secondthoughts.commands.refine import config_from_args as refine_config

    def train_cfg(text: str) -> TrainConfig:
        (tmp_path / "c.yaml").write_text(text)
        argv = ["train", "--config", str(tmp_path / "c.yaml"), "--data", "x.jsonl"]
        return config_from_args(build_parser(argv).parse_args(argv))

    # YAML reads 5e-5 as text and a list of lists as lists: both reach the settings as the flags would.
    cfg = train_cfg("lr: 5e-5\ncost_sets: [[1, 1, 2], [1, 1, 3]]\n")
    assert cfg.lr == 5e-5 and isinstance(cfg.lr, float) and cfg.cost_sets == [[1, 1, 2], [1, 1, 3]]
    assert train_cfg("cost_sets: 1,1,2;2,1,1\n").cost_sets == [[1, 1, 2], [2, 1, 1]]
    for text, message in [("cost_sets: [[1, 1]]\n", "cost_sets: each cost set is insert,delete,replace"),
                          ("max_length: two\n", "max_length: expected a whole number, got 'two'"),
                          ("mode: rewrite\n", "mode: expected one of"),
                          ("packing: 1\n", "packing: expected true or false"),
                          ("learning_rate: 1\n", "unknown training settings: \\['learning_rate'\\]")]:
        with pytest.raises(ValueError, match=f"c.yaml: {message}"):
            train_cfg(text)
    (tmp_path / "r.yaml").write_text("k: four\n")
    argv = ["refine", "--config", str(tmp_path / "r.yaml"), "--policy", "p", "--reward", "r", "--data", "x.jsonl"]
    with pytest.raises(ValueError, match="r.yaml: k: expected a whole number, got 'four'"):
        refine_config(build_parser(argv).parse_args(argv))
    # The flag itself takes the whole list in one value, as before.
    argv = ["train", "--data", "x.jsonl", "--cost-sets", "1,1,2;1,1,3"]
    assert config_from_args(build_parser(argv).parse_args(argv)).cost_sets == [[1, 1, 2], [1, 1, 3]]
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(["train", "--data", "x.jsonl", "--cost-sets", "1,1"])


def test_every_config_field_has_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(TrainConfig))


@pytest.mark.slow
def test_two_processes_train_together_like_one(tmp_path, tiny_model_dir, examples_jsonl):
    """Two CPU processes (DDP over gloo): one consistent run folder, and (dropout off) the same
    losses as one process with the same global batch. ``--multi_gpu`` is what makes accelerate
    start several processes; ``--cpu`` alone starts one unless MPI is set up."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None or torch.cuda.is_available():
        pytest.skip("needs the accelerate CLI and a CPU-only machine")
    common = ["--data", str(examples_jsonl), "--model", str(tiny_model_dir), "--max-length", "128", "--max-steps", "4",
              "--eval-every", "2", "--log-every", "1", "--eval-fraction", "0.2", "--lora-r", "4", "--lora-dropout", "0",
              "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "secondthoughts", "train", *common, "--batch-size", "1", "--out", str(tmp_path / "ddp")]  # fmt: skip
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "single", max_steps=4, batch_size=2, lora_dropout=0.0))

    ddp = tmp_path / "ddp"
    info = json.loads((ddp / "config.json").read_text())
    assert info["plan"]["world_size"] == 2
    assert sorted(p.name for p in (ddp / "checkpoint").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    rows = _metrics(ddp)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # written once, by the main process
    ref = _metrics(single.out)
    for r, s in zip(rows, ref):
        assert r["step"] == s["step"]
        key = "loss" if "loss" in r else "eval_loss"
        assert r[key] == pytest.approx(s[key], rel=1e-4)
    model, _ = models.load(str(ddp))
    assert isinstance(model, PeftModel)


def test_init_from_continues_a_lora_run_and_the_result_loads_alone(tmp_path, tiny_model_dir, examples_jsonl):
    first = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "first", max_steps=2, chain_format="inline", lora_r=4, lora_alpha=8))
    argv = ["train", "--init-from", str(first.out), "--data", str(examples_jsonl), "--out", str(tmp_path / "second")]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    # the run's base, format and adapter shape carry over; other settings are the new run's
    assert (cfg.model, cfg.chain_format, cfg.lora_r, cfg.lora_alpha, cfg.full) == (str(tiny_model_dir), "inline", 4, 8, False)
    cfg.max_steps, cfg.max_length, cfg.progress, cfg.eval_every = 3, 128, False, 3
    start, _ = models.load(str(first.out))
    second = train(cfg)
    assert second.state.step == 3
    adapter = json.loads((second.out / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir) and adapter["r"] == 4  # loads without the first run
    assert json.loads((second.out / "config.json").read_text())["train"]["init_from"] == str(first.out)
    assert "continuing the trained run" in (second.out / "README.md").read_text()
    shutil.rmtree(first.out)
    model, tok = models.load(str(second.out))
    assert isinstance(model, PeftModel) and not isinstance(model.base_model.model, PeftModel)  # one adapter, not nested
    before = {n: p for n, p in start.named_parameters() if "lora_" in n or "token_adapter" in n}
    after = dict(model.named_parameters())
    assert before and all(n in after for n in before)
    # training moved the adapter it started from, LoRA factors and the new token rows alike
    assert any(not torch.allclose(p, after[n]) for n, p in before.items() if "lora_B" in n)
    assert any(not torch.allclose(p, after[n]) for n, p in before.items() if "token_adapter" in n)
    from secondthoughts.realign import Realigner

    assert Realigner(second.out).chain_format == "inline"


def test_init_from_a_full_run(tmp_path, tiny_model_dir, examples_jsonl):
    first = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "first", full=True, max_steps=1, packing=False))
    argv = ["train", "--init-from", str(first.out), "--data", str(examples_jsonl), "--out", str(tmp_path / "second"), "--max-steps", "2"]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    assert cfg.full and cfg.model == str(tiny_model_dir)
    cfg.max_length, cfg.progress = 128, False
    start, _ = models.load(str(first.out))
    second = train(cfg)
    model, _ = models.load(str(second.out))
    assert not isinstance(model, PeftModel)
    w0, w1 = start.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)


def test_init_from_refuses_what_it_cannot_continue(tmp_path, tiny_model_dir, examples_jsonl, capsys):
    first = train(_config(tmp_path, tiny_model_dir, examples_jsonl, "first", max_steps=1))
    base = ["train", "--data", str(examples_jsonl), "--out", str(tmp_path / "second"), "--init-from"]
    (tmp_path / "empty").mkdir()
    moved = tmp_path / "moved"
    shutil.copytree(first.out, moved)
    cfg = json.loads((moved / "model" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "model" / "adapter_config.json").write_text(json.dumps(cfg))
    cases = [
        ([str(tmp_path / "empty")], "not a trained run"),
        ([str(moved)], "base model"),
        ([str(first.out), "--chain-format", "inline"], "settings differ"),
        ([str(first.out), "--lora-r", "8"], "settings differ"),
    ]
    # the first attempt: a trained run given as the base model
    for model in (first.out, first.out / "model"):
        assert main(["train", "--data", str(examples_jsonl), "--out", str(tmp_path / "second"), "--model", str(model)]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and f"continue it with --init-from {first.out}" in err[0], err
    capsys.readouterr()
    for extra, message in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "second").exists()
