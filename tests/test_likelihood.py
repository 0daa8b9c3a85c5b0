"""The rewrite-likelihood scorer: its numbers against a plain forward, and its use as a best-of-N reranker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from secondthoughts import coherence as C
from secondthoughts.best_of import choose_best
from secondthoughts.cli import main
from secondthoughts.decoding import LENGTH_PENALTY, SOURCE_PENALTY, prompt_ids
from secondthoughts.likelihood import RewriteLikelihood, is_rewrite_run
from secondthoughts.realign import Realigner, RealignResult
from secondthoughts.sequences import encode_completion
from secondthoughts.sft import TrainConfig, train

CTX, SRC = "It is wrong to hit people.", "Tom hits his brother when he is angry."


def _run(tmp: Path, model_dir: Path, data: Path, mode: str) -> Path:
    cfg = TrainConfig(data=str(data), model=str(model_dir), out=str(tmp / mode), mode=mode, max_length=128, batch_size=2, max_steps=2,
                      eval_fraction=0.0, eval_every=2, lora_r=4, progress=False)  # fmt: skip
    return train(cfg).out


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, examples_jsonl: Path) -> Path:
    return _run(tmp_path_factory.mktemp("lik"), tiny_model_dir, examples_jsonl, "direct")


def test_scores_are_the_mean_token_logprob_of_a_plain_forward(direct_run: Path) -> None:
    scorer = RewriteLikelihood(direct_run, batch_size=2)
    texts = ["Tom talks to his brother.", "Sam.", "Tom calmly talks to his brother about what made him angry.", "Tom."]
    # Texts of one (context, source) share its prompt's pass, in groups of batch_size: two stories interleaved.
    sources = [SRC, "Sam hides the ladder.", SRC, SRC]
    contexts = [CTX, "", CTX, CTX]
    got = scorer(contexts, texts, sources)
    model, tok = Realigner(direct_run).model, scorer.tokenizer
    for text, score, ctx, src in zip(texts, got, contexts, sources):
        prompt = prompt_ids(tok, ctx, src, scorer.max_length)
        completion = encode_completion(tok, None, text, src)
        with torch.no_grad():
            logp = model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
        want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(completion)) / len(completion)
        assert score == pytest.approx(want, abs=1e-4)
    assert len(set(got)) == 4 and all(s < 0 for s in got)
    with pytest.raises(ValueError, match="3 contexts, 3 texts and 1 sources"):
        scorer([CTX] * 3, texts[:3], [SRC])


def test_a_direct_run_reranks_best_of_n_with_the_sources(direct_run: Path, tmp_path: Path, tiny_model_dir: Path, examples_jsonl: Path) -> None:
    assert is_rewrite_run(direct_run) and not is_rewrite_run(tmp_path)
    C.check_reranker([str(direct_run)])
    C.check_reranker([f"likelihood={direct_run}", "coherence=pkg.mod:fn"])
    coe = _run(tmp_path, tiny_model_dir, examples_jsonl, "coe")
    with pytest.raises(ValueError, match="not a direct-mode run folder"):
        C.check_reranker([f"likelihood={coe}"])
    with pytest.raises(ValueError, match="not a direct-mode run"):
        RewriteLikelihood(coe)
    rerank = C.load_reranker([str(direct_run)])
    assert rerank.takes_sources and not rerank.alignment and not rerank.coherence
    texts = ["Tom talks to his brother.", "Tom."]
    direct = RewriteLikelihood(direct_run)([CTX] * 2, texts, [SRC] * 2)
    assert rerank([CTX] * 2, texts, [SRC] * 2) == pytest.approx(direct)
    with pytest.raises(ValueError, match="needs the sources"):
        rerank([CTX] * 2, texts)
    # choose_best hands the candidates' source to a scorer that takes sources
    seen: list[Any] = []

    class Spy:
        takes_sources = True

        def __call__(self, contexts: list[str], texts: list[str], sources: list[str]) -> list[float]:
            seen.append(sources)
            return [float(len(t)) for t in texts]

    best = choose_best([RealignResult(CTX, SRC, "apply", text=t, valid=True) for t in texts], Spy())
    assert best.text == texts[0] and seen == [[SRC, SRC]]
    # end to end: sampled chains of a chain model, picked by the rewrite model's likelihood
    res = Realigner(coe).realign(CTX, SRC, best_of=3, rerank=rerank, temperature=1.5, seed=2, max_new_tokens=24)
    assert res.candidates == 4 and res.rerank_score <= 0
    assert res.rerank_score == pytest.approx(RewriteLikelihood(direct_run)([CTX], [res.text], [SRC])[0], abs=1e-5)
    # the command writes every candidate with its score when asked
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"context": CTX, "source": SRC}) + "\n")
    cmd = ["realign", "--model", str(coe), "--input", str(inp), "--output", str(out), "--best-of", "3", "--rerank", str(direct_run),
           "--temperature", "1.5", "--seed", "2", "--max-new-tokens", "24"]  # fmt: skip
    assert main([*cmd, "--keep-candidates"]) == 0
    row = json.loads(out.read_text())
    alts = row["alternatives"]
    assert 1 <= len(alts) <= 4 and len({a["text"] for a in alts}) == len(alts) and row["text"] in {a["text"] for a in alts}
    assert row["rerank_score"] == max(a["score"] for a in alts if a["valid"] and a["text"] != SRC)
    lik = RewriteLikelihood(direct_run)([CTX] * len(alts), [a["text"] for a in alts], [SRC] * len(alts))
    penalties = [SOURCE_PENALTY * C.source_similarity(a["text"], SRC) + LENGTH_PENALTY * math.log(len(a["text"].split())) for a in alts]
    assert SOURCE_PENALTY > 0 and LENGTH_PENALTY > 0  # the command's default best-of score has both
    assert [a["score"] for a in alts] == pytest.approx([x - p for x, p in zip(lik, penalties)], abs=1e-5)
    assert row["score_penalties"] == {"source": SOURCE_PENALTY, "length": LENGTH_PENALTY}  # a reader can add them back
    assert main(cmd) == 0 and "alternatives" not in json.loads(out.read_text())
    assert main([*cmd, "--source-penalty", "-1"]) == 1  # refused before any model loads


def test_likelihood_alone_names_the_shipped_rewrite_model() -> None:
    from secondthoughts.likelihood import SHIPPED

    assert is_rewrite_run(SHIPPED) and (SHIPPED / "README.md").is_file()
    C.check_reranker(["likelihood"])
    assert C._kind_and_path("likelihood") == ("likelihood", str(SHIPPED))
    assert C._kind_and_path("coherence=pkg.mod:fn") == ("coherence", "pkg.mod:fn")


@pytest.mark.slow
def test_the_shipped_rewrite_model_prefers_a_whole_sentence_to_a_splice() -> None:
    """The embedded model with the shipped adapter, on a story written here: a splice of source and
    target words scores below the whole sentence."""
    rerank = C.load_reranker(["likelihood"])
    ctx = "It is kind to return what you borrow. Ann borrowed her neighbour's ladder. Ann wants to keep her garden tidy."
    src = "Ann keeps the ladder and hides it in her shed."
    texts = ["Ann returns the ladder to her neighbour and thanks him.", "Ann returns the ladder and hides it to her neighbour thanks."]
    whole, splice = rerank([ctx] * 2, texts, [src] * 2)
    assert whole > splice
