"""RL refinement (the loss pieces: test_rl_loss.py; rollout rows: test_rollouts.py): the config,
then tiny-model runs: the run folder and final model, the logged KL being the KL in the loss, exact resume, the CLI and two
processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from secondthoughts import models
from secondthoughts.chain_text import parse_chain
from secondthoughts.cli import main
from secondthoughts.constrained import ChainConstraint
from secondthoughts.data import read_examples
from secondthoughts.realign import Realigner
from secondthoughts.refine import RefineConfig, Refiner, refine
from secondthoughts.rl_loss import (
    ail_hinge,
    clipped_policy_loss,
    greedy_advantages,
    mean_token_logp,
    rloo_advantages,
    sequence_kl,
)
from secondthoughts.rollouts import CompletionLogProbs, batch_rows
from secondthoughts.sequences import split_completion
from secondthoughts.sft import TrainConfig, train

TIMING = {"samples_per_s", "rollout_s", "score_s", "update_s", "elapsed_s", "peak_memory_mb"}  # measured, not computed


def word_reward(contexts: list[str], texts: list[str]) -> list[float]:
    """A stand-in for the reward model: likes 'talks', mildly likes change."""
    return [1.0 if "talk" in t else 0.2 + 0.01 * len(t) for t in texts]


# ---------------------------------------------------------------- the config


def test_config_is_checked():
    with pytest.raises(ValueError, match="k >= 2"):
        RefineConfig(k=1)
    assert RefineConfig(k=1, baseline="greedy").k == 1
    with pytest.raises(ValueError, match="ail_costs"):
        RefineConfig(ail_costs="1,1")
    with pytest.raises(ValueError, match="baseline"):
        RefineConfig(baseline="ppo")
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(RefineConfig))


# ---------------------------------------------------------------- tiny runs


@pytest.fixture(scope="module")
def aem_run(tmp_path_factory, tiny_model_dir, examples_jsonl) -> Path:
    """A tiny LoRA AEM run (a few steps: it writes near-noise, which is what RL starts from)."""
    cfg = TrainConfig(
        data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path_factory.mktemp("aem") / "aem"),
        max_length=128, batch_size=4, max_steps=3, eval_fraction=0.0, lora_r=4, progress=False,
    )  # fmt: skip
    return train(cfg).out


def _cfg(tmp_path: Path, aem: Path, data: Path, name: str = "rl", **kw) -> RefineConfig:
    settings = {
        "policy": str(aem), "reward": "unused", "data": str(data), "out": str(tmp_path / name), "steps": 3,
        "prompts_per_step": 2, "k": 3, "max_new_tokens": 24, "lr": 1e-2, "lora_r": 4, "lora_alpha": 8,
        "checkpoint_every": 1, "progress": False,
    }  # fmt: skip
    return RefineConfig(**{**settings, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_final_model_and_reload(tmp_path, aem_run, examples_jsonl):
    r = Refiner(_cfg(tmp_path, aem_run, examples_jsonl, eval_data=str(examples_jsonl), eval_max=4), word_reward)
    res = r.train()
    out = res.out
    rows = _metrics(out)
    steps = [x for x in rows if "reward" in x]
    evals = [x for x in rows if "eval_reward" in x]
    assert [x["step"] for x in steps] == [1, 2, 3] and [x["step"] for x in evals] == [0, 3]
    for key in ("reward", "score", "objective", "kl", "valid", "identical", "copies_context", "kept", "edits", "policy_loss", "ail_loss", "samples_per_s"):
        assert all(math.isfinite(x[key]) for x in steps), key
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # fresh adapter: the policy is the AEM model
    # constrained decoding: every chain applies, unless max_new_tokens cut it (logged)
    assert all(e.startswith("no <|eoc|> within 24") for x in steps for e in x.get("invalid_examples", []))
    assert all(0 <= x["valid"] <= 1 for x in steps)
    assert (out / "reward.png").stat().st_size > 1000
    info = json.loads((out / "config.json").read_text())
    assert info["train"]["mode"] == "coe" and info["refine"]["k"] == 3 and info["policy"]["reference"] == "adapter disabled"
    assert not list(out.glob(".*"))

    # model/: one adapter on the original base, giving exactly the refined policy's outputs
    cfg = json.loads((out / "model" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["base_model_name_or_path"] == json.loads((aem_run / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded, _ = models.load(str(out))
    ids = torch.tensor([r.prompt_ids(next(read_examples(examples_jsonl)))])
    with torch.no_grad():
        want = r.policy(ids).logits
        with r.policy.disable_adapter():
            aem_logits = r.policy(ids).logits
        got = loaded(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(want, aem_logits, atol=1e-3)  # training moved the policy
    res2 = Realigner(out).realign("It is wrong to hit people.", "Tom hits his brother.", max_new_tokens=20)
    assert res2.valid


def test_logged_kl_is_the_kl_in_the_loss(tmp_path, aem_run, examples_jsonl):
    r = Refiner(_cfg(tmp_path, aem_run, examples_jsonl, beta=0.3), word_reward)
    exs = list(read_examples(examples_jsonl))[:2]
    first = r.rollout(exs, seed=1)
    r.score(first)
    r.update(first)  # move the policy away from the reference
    batch = r.rollout(exs, seed=2)
    rewards = r.score(batch).clone()
    rows, _ = r.sample_rows(batch)
    kl_before = sequence_kl(r.policy_logprobs(rows), r.reference_logprobs(rows), rows["completion_mask"])
    stats = r.update(batch)
    assert kl_before.abs().max() > 1e-4
    assert r.last_kl.tolist() == pytest.approx(kl_before.tolist(), abs=1e-5)
    assert stats["kl"] == pytest.approx(float(kl_before.mean()), abs=1e-5)
    assert stats["objective"] == pytest.approx(float((rewards - 0.3 * kl_before).mean()), abs=1e-5)
    assert r.last_advantages.tolist() == pytest.approx(rloo_advantages(rewards - 0.3 * kl_before, 3).tolist(), abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_constrained_logprobs_are_the_sampling_distribution(tmp_path, aem_run, examples_jsonl, temperature):
    """Chains sampled under the constraint come from the model renormalized over the allowed
    tokens (at the sampling temperature): the log-probs of the loss and the KL are those, so the
    estimate is not biased by tokens only the constraint made possible."""
    r = Refiner(_cfg(tmp_path, aem_run, examples_jsonl, k=2, max_new_tokens=16, temperature=temperature), word_reward)
    exs = list(read_examples(examples_jsonl))[:2]
    batch = r.rollout(exs, seed=3)
    rows, outside = r.sample_rows(batch)
    assert "allow" in rows and outside == 0
    got = r.policy_logprobs(rows)
    for i, comp in enumerate(batch.completion_ids):
        prompt = batch.prompt_ids[i // batch.k]
        processor = ChainConstraint(r.vocab, [batch.sources[i]], len(prompt))
        with torch.no_grad():
            logits = r.policy(torch.tensor([prompt + comp])).logits[0] / temperature
        want = []
        for j, t in enumerate(comp):
            scores = processor(torch.tensor([prompt + comp[:j]]), logits[len(prompt) - 1 + j].unsqueeze(0))
            want.append(float(scores.log_softmax(-1)[0, t]))
        assert got[i, : len(comp)].tolist() == pytest.approx(want, abs=1e-4)
        # renormalized over a subset: never below the unconstrained log-prob
        free = logits[len(prompt) - 1 : -1].log_softmax(-1).gather(1, torch.tensor(comp).unsqueeze(1)).squeeze(1)
        assert (got[i, : len(comp)] >= free - 1e-5).all()
        assert (got[i, : len(comp)] > free + 1e-3).any()  # the constraint removed mass somewhere
    # the same rows without the constraint are the plain log-probs
    plain = CompletionLogProbs(r.policy, temperature)(**{k: v for k, v in rows.items() if k != "allow"})
    assert not torch.allclose(plain, got)


def test_resume_repeats_the_uninterrupted_run(tmp_path, aem_run, examples_jsonl):
    kw = {"steps": 4, "checkpoint_every": 2, "ail_negative": "both"}
    full = refine(_cfg(tmp_path, aem_run, examples_jsonl, "full", **kw), word_reward)
    cfg = _cfg(tmp_path, aem_run, examples_jsonl, "killed", **kw)
    refine(cfg, word_reward, stop_after=3)
    assert not (Path(cfg.out) / "model").exists()
    resumed = refine(cfg, word_reward, resume=True)
    assert resumed.state.step == 4
    strip = [{k: v for k, v in x.items() if k not in TIMING} for x in _metrics(full.out)]
    assert strip == [{k: v for k, v in x.items() if k not in TIMING} for x in _metrics(Path(cfg.out))]
    with pytest.raises(FileExistsError, match="--resume"):
        refine(cfg, word_reward)
    with pytest.raises(ValueError, match="beta"):
        refine(_cfg(tmp_path, aem_run, examples_jsonl, "killed", beta=0.5, **kw), word_reward, resume=True)


def test_greedy_baseline_ppo_epochs_and_invalid_chains(tmp_path, aem_run, examples_jsonl):
    cfg = _cfg(tmp_path, aem_run, examples_jsonl, baseline="greedy", k=2, ppo_epochs=2, constrained=False, max_new_tokens=12, invalid_penalty=2.0, ail_negative="reverse")
    r = Refiner(cfg, word_reward)
    batch = r.rollout(list(read_examples(examples_jsonl))[:3], seed=0)
    assert batch.greedy is not None and len(batch.greedy) == 3 and len(batch) == 6
    rewards = r.score(batch)
    assert not all(batch.valid)  # an untrained tiny model, unconstrained: noise that does not parse
    for i, ok in enumerate(batch.valid):
        assert (rewards[i] == -2.0) == (not ok)
        assert ok or batch.errors[i]
    # expected advantages: (reward - beta KL) minus the same for the prompt's greedy decode
    def penalized(b):
        rows, _ = r.sample_rows(b)
        return b.rewards - cfg.beta * sequence_kl(r.policy_logprobs(rows), r.reference_logprobs(rows), rows["completion_mask"])

    want = greedy_advantages(penalized(batch), penalized(batch.greedy), 2)
    stats = r.update(batch)
    assert 0.0 <= stats["clip_frac"] <= 1.0 and math.isfinite(stats["ail_loss"])
    assert r.last_advantages.tolist() == pytest.approx(want.tolist(), abs=1e-5)


def test_an_inline_policy_samples_and_imitates_inline_chains(tmp_path, tiny_model_dir, examples_jsonl):
    cfg = TrainConfig(
        data=str(examples_jsonl), model=str(tiny_model_dir), out=str(tmp_path / "aem-inline"), chain_format="inline", merge_gap=1,
        max_length=128, batch_size=4, max_steps=3, eval_fraction=0.0, lora_r=4, progress=False,
    )  # fmt: skip
    aem = train(cfg).out
    r = Refiner(_cfg(tmp_path, aem, examples_jsonl, k=3, max_new_tokens=40, ail_negative="both"), word_reward)
    assert r.chain_format == "inline"
    exs = list(read_examples(examples_jsonl))[:2]
    batch = r.rollout(exs, seed=0)
    for ids, chain, ok, err, source in zip(batch.completion_ids, batch.chains, batch.valid, batch.errors, batch.sources):
        assert ok or err.startswith("no <|eoc|> within 40"), err  # constrained: only the budget cuts a chain
        if ok:
            assert parse_chain(split_completion(r.vocab.decode(ids))[0], source, "inline") == chain
    _, outside = r.sample_rows(batch)
    assert outside == 0
    _, gold, _ = r.ail_rows(batch)
    assert all(r.vocab.keep in ids for ids in gold[: len(exs)])  # gold chains as the policy writes them: inline, merged
    for ex, ids in zip(exs, gold):
        chain = parse_chain(r.vocab.decode(ids), ex.source, "inline")
        assert r.merge_gap == 1 and all(b.start - a.end > 1 for a, b in zip(chain, chain[1:]))
    r.score(batch)
    assert math.isfinite(r.update(batch)["ail_loss"])


def test_full_finetuning_uses_a_frozen_copy(tmp_path, aem_run, examples_jsonl):
    res = refine(_cfg(tmp_path, aem_run, examples_jsonl, full=True, steps=1, lr=1e-3, ail_weight=0.0), word_reward)
    info = json.loads((res.out / "config.json").read_text())
    assert info["policy"]["reference"] == "frozen copy"
    assert (res.out / "model" / "model.safetensors").is_file()
    model, _ = models.load(str(res.out))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_cli_runs_and_resumes(tmp_path, aem_run, examples_jsonl, capsys):
    out = tmp_path / "cli"
    argv = ["refine", "--policy", str(aem_run), "--reward", "test_refine:word_reward", "--data", str(examples_jsonl), "--out", str(out),
            "--steps", "2", "--prompts-per-step", "2", "--k", "2", "--max-new-tokens", "16", "--lora-r", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "2/2 steps" in capsys.readouterr().out
    shutil.rmtree(out / "model")
    assert main(["refine", "--out", str(out), "--resume"]) == 0  # finished: resume only writes the model again
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert main(["refine", "--out", str(out), "--resume", "--steps", "3"]) == 1  # one line, no traceback
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: resume: settings differ") and "'steps'" in last


@pytest.mark.slow
def test_two_processes_refine_together(tmp_path, aem_run, examples_jsonl):
    """Two CPU processes (DDP over gloo): one run folder, metrics written once, a checkpoint with
    both processes' RNG states, and twice the samples per step."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None or torch.cuda.is_available():
        pytest.skip("needs the accelerate CLI and a CPU-only machine")
    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    out = tmp_path / "ddp"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "secondthoughts", "refine", "--policy", str(aem_run), "--reward", "test_refine:word_reward",
           "--data", str(examples_jsonl), "--out", str(out), "--steps", "2", "--prompts-per-step", "1", "--k", "2",
           "--max-new-tokens", "16", "--lora-r", "4", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-20000:]
    info = json.loads((out / "config.json").read_text())
    assert info["plan"]["world_size"] == 2 and info["plan"]["samples_per_step"] == 4
    assert sorted(p.name for p in (out / "checkpoint").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert [x["step"] for x in _metrics(out)] == [1, 2]
    models.load(str(out))


def test_a_coherence_term_multiplies_the_reward_and_is_logged(tmp_path, aem_run, examples_jsonl):
    def coherent(contexts, texts):
        return [0.25 if len(t.split()) < 6 else 1.0 for t in texts]

    r = Refiner(_cfg(tmp_path, aem_run, examples_jsonl, coherence="module:unused", coherence_weight=2.0, steps=1), word_reward, coherent)
    exs = list(read_examples(examples_jsonl))[:2]
    batch = r.rollout(exs, seed=1)
    r.score(batch)
    align = word_reward(batch.contexts, batch.texts)
    for i, v in enumerate(batch.valid):
        if v:
            want = align[i] * coherent([""], [batch.texts[i]])[0] ** 2
            assert float(batch.scores[i]) == pytest.approx(want, rel=1e-5)
            assert float(batch.alignment[i]) == pytest.approx(align[i]) and float(batch.coherence[i]) in (0.25, 1.0)
    r.train()
    step = [x for x in _metrics(Path(r.config.out)) if "reward" in x][0]
    for key in ("coherence", "alignment", "short", "nothing_new", "distinct", "top_opening"):
        assert 0 <= step[key] <= 1, key
    with pytest.raises(ValueError, match="coherence_weight must be >= 0"):
        _cfg(tmp_path, aem_run, examples_jsonl, coherence_weight=-1)



# ---------------------------------------------------------------- memory: the same numbers as the whole batch at once


def _plain_logprobs(model, rows, allow, temperature):
    """The straightforward computation: full-vocabulary logits of every row at once, the dense
    constraint mask, log-softmax."""
    width = rows["input_ids"].shape[1] - rows["completion_ids"].shape[1]
    position_ids = (rows["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], position_ids=position_ids).logits[:, width - 1 : -1].float() / temperature
    keep = rows["completion_mask"].bool()
    if allow is not None:
        dense = torch.ones(logits.shape, dtype=torch.bool)
        dense[keep] = allow[:, : logits.shape[-1]]
        logits = logits.masked_fill(~dense, -float("inf"))
    lp = logits.log_softmax(-1).gather(-1, rows["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, lp, torch.zeros_like(lp))


def _whole_batch_update(r, batch):
    """The update as one forward and one backward over all samples and AIL rows (the code before
    per-prompt groups), on the straightforward log-probs; returns its statistics."""
    from secondthoughts.constraint_sets import completion_masks

    cfg = r.config
    n, k, p = len(batch), batch.k, len(batch.examples)
    ail_prompts, ail_comps, ail_sources = r.ail_rows(batch)
    rows = batch_rows([batch.prompt_ids[i // k] for i in range(n)] + ail_prompts, batch.completion_ids + ail_comps, r.pad_id)
    size = r.policy.get_output_embeddings().weight.shape[0]
    allow, outside = completion_masks(r.vocab, batch.sources + ail_sources, batch.completion_ids + ail_comps, size, chain_format=r.chain_format)
    cm = rows["completion_mask"]
    mask = cm[:n]
    with torch.no_grad(), r.policy.disable_adapter():
        ref = _plain_logprobs(r.policy, rows, allow, cfg.temperature)[:n]
    stats = {}
    for epoch in range(cfg.ppo_epochs):
        logps = _plain_logprobs(r.policy, rows, allow, cfg.temperature)
        if epoch == 0:
            old = logps[:n].detach()
            kl = sequence_kl(old, ref, mask)
            total = batch.rewards - cfg.beta * kl
            advantages = rloo_advantages(total, k)
            stats.update(objective=float(total.mean()), kl=float(kl.mean()), kl_per_token=float(((old - ref) * mask).sum() / mask.sum()),
                         advantage_abs=float(advantages.abs().mean()), outside_constraint=float(outside))  # fmt: skip
        policy_loss, clip_frac = clipped_policy_loss(logps[:n], old, advantages, mask, cfg.clip_eps)
        expert_ll = mean_token_logp(logps[n : n + p], cm[n : n + p])
        lowest = batch.rewards.view(p, k).argmin(1) + torch.arange(p) * k
        negatives = [mean_token_logp(logps[lowest], cm[lowest]), mean_token_logp(logps[n + p : n + 2 * p], cm[n + p : n + 2 * p])]
        ail = torch.stack([ail_hinge(expert_ll, neg, cfg.ail_margin) for neg in negatives]).mean()
        loss = policy_loss + cfg.ail_weight * ail
        if epoch == 0:
            stats.update(ail_loss=ail.item(), ail_gap=torch.stack([expert_ll - neg for neg in negatives]).mean().item(), expert_ll=expert_ll.mean().item(),
                         policy_loss=policy_loss.item(), loss=loss.item())  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(r.params, cfg.max_grad_norm)
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        stats["clip_frac"] = float(clip_frac)
    return stats, kl, advantages


@pytest.mark.parametrize("temperature, checkpointing", [(1.0, True), (0.7, True), (1.0, False)])
def test_update_by_prompt_gives_the_whole_batch_numbers(tmp_path, aem_run, examples_jsonl, temperature, checkpointing):
    """Per-prompt forwards and backwards, chunked log-probs, constraint index sets and gradient
    checkpointing give the statistics, KL, advantages and updated weights of the whole batch
    computed at once, in eval mode, without recomputation."""
    import copy

    cfg = _cfg(tmp_path, aem_run, examples_jsonl, k=3, prompts_per_step=3, ppo_epochs=2, clip_eps=0.05, ail_negative="both",
               ail_margin=5.0, temperature=temperature, max_new_tokens=20, gradient_checkpointing=checkpointing)  # fmt: skip
    r = Refiner(cfg, word_reward)
    assert r.policy.get_base_model().is_activation_checkpointing is checkpointing
    torch.manual_seed(7)
    with torch.no_grad():  # move the adapter off zero, so that KL, ratios and clipping are not trivial
        for prm in r.params:
            prm.add_(torch.randn_like(prm) * 0.05)
    batch = r.rollout(list(read_examples(examples_jsonl))[:3], seed=5)
    r.score(batch)
    assert sum(map(len, batch.completion_ids)) > 20
    start = [prm.detach().clone() for prm in r.params]
    opt_state = copy.deepcopy(r.optimizer.state_dict())
    want, want_kl, want_adv = _whole_batch_update(r, batch)
    want_params = [prm.detach().clone() for prm in r.params]
    with torch.no_grad():
        for prm, s in zip(r.params, start):
            prm.copy_(s)
    r.optimizer.load_state_dict(opt_state)
    got = r.update(batch)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert want["kl"] != 0 and 0 < want["clip_frac"] < 1 and want["ail_loss"] > 0
    assert r.last_kl.tolist() == pytest.approx(want_kl.tolist(), abs=1e-5)
    assert r.last_advantages.tolist() == pytest.approx(want_adv.tolist(), abs=1e-5)
    for prm, w, s in zip(r.params, want_params, start):
        assert torch.allclose(prm, w, atol=1e-5), (prm - w).abs().max()
    assert any(not torch.equal(w, s) for w, s in zip(want_params, start))
