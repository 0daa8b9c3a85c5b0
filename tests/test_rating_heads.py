"""rating_heads: the choice rule, the shipped heads on the embedded SmolLM2, best-of's choice with
them (among the score's top, or added to it), and bad --heads / --heads-top / --heads-add stopping
before a model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secondthoughts import rating_heads as RH


def test_heads_choose_among_the_top_only() -> None:
    base = [5.0, 4.0, 3.0, 2.0, 1.0]
    heads = np.array([[0, 0], [1, 0], [0, 1], [9, 9], [9, 9]], dtype=float)
    assert RH.top_then_heads(base, heads, top=3) == 1  # 3 and 4 rate best but rank below the top 3; 1 and 2 tie: the better score
    assert RH.top_then_heads(base, heads, top=4) == 3
    assert RH.top_then_heads(base, heads, top=1) == 0  # top 1: the base score's own choice


def test_each_head_is_standardised_over_every_candidate() -> None:
    # Among the top 3 alone, candidate 1's align 0 and coherence 1.2 standardise to the best sum; over
    # all five, coherence spreads from -20 to 20, so 1.2 is next to nothing and candidate 0's align
    # lead decides.
    base = [5.0, 4.0, 3.0, 2.0, 1.0]
    heads = np.array([[1, 0], [0, 1.2], [0, 1.1], [0, -20], [0, 20]], dtype=float)
    assert RH.top_then_heads(base, heads, top=3) == 0
    assert RH.top_then_heads(base[:3], heads[:3], top=3) == 1  # standardised over the three: another choice


def test_ties_and_no_candidates() -> None:
    same = np.zeros((3, 2))
    assert RH.top_then_heads([1.0, 3.0, 2.0], same, top=3) == 1  # heads tie: the better base score
    assert RH.top_then_heads([1.0, 1.0, 1.0], same, top=3) == 0  # all tie: the first
    with pytest.raises(ValueError, match="no candidate"):
        RH.top_then_heads([], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="top must be >= 1"):
        RH.top_then_heads([1.0], np.zeros((1, 2)), top=0)


def test_heads_added_to_the_score_with_their_weights() -> None:
    base = [1.0, 0.5, 0.0, 0.6]
    # align spreads widely (sd 28) and favours 1; coherence narrowly (sd 0.71) and favours 2
    heads = np.array([[0, 0.0], [40, 0.0], [-40, 1.0], [0, -1.0]])
    z = RH.standardised(heads)  # align [0, 1.41, -1.41, 0], coherence [0, 0, 1.41, -1.41]
    assert RH.heads_added(base, heads, (0.0, 0.0)) == 0  # no weight: the base score's own choice
    assert RH.heads_added(base, heads, (1.0, 0.0)) == 1  # 0.5 + 1.41: the align head alone
    assert RH.heads_added(base, heads, (0.0, 1.0)) == 2  # 0.0 + 1.41: the coherence head alone; raw, its 1.0 would only tie 1.0 + 0 (the first wins)
    assert RH.heads_added(base, heads, (0.25, 1.0)) == int(np.argmax(np.asarray(base) + z @ [0.25, 1.0])) == 2
    assert RH.heads_added(base, heads, (1.0, 0.25)) == 1
    assert RH.heads_added([1.0, 1.0], np.zeros((2, 2)), (1.0, 1.0)) == 0  # ties: the first
    with pytest.raises(ValueError, match="no candidate"):
        RH.heads_added([], np.zeros((0, 2)), (1.0, 1.0))


def test_heads_flags_reach_the_reranker_settings() -> None:
    from secondthoughts.cli import build_parser
    from secondthoughts.commands import realign
    from secondthoughts.settings import resolve

    def settings(*flags: str) -> dict:
        parser = build_parser(["realign"])
        args = parser.parse_args(["realign", "Tom hits his brother.", *flags])
        resolve(args, realign.settings_parts(args), "realign settings", parser.error)
        return {k: v for k, v in realign.rerank_settings(args).items() if k.startswith("heads")}

    assert settings() == {"heads": "shipped", "heads_choice": "add", "heads_add": [0.25, 0.5], "heads_top": 5}
    assert settings("--heads-choice", "top", "--heads-add", "0", "2", "--heads-top", "3") == {
        "heads": "shipped", "heads_choice": "top", "heads_add": [0.0, 2.0], "heads_top": 3}  # fmt: skip


def test_bad_heads_flags_stop_before_a_model_loads(tmp_path: Path) -> None:
    from secondthoughts.coherence import check_reranker

    with pytest.raises(ValueError, match=r"--heads .*: no heads\.json"):
        check_reranker(["likelihood"], heads=str(tmp_path))
    with pytest.raises(ValueError, match="--heads-top must be >= 1"):
        check_reranker(["likelihood"], heads_top=0)
    for bad in ([1.0], [1.0, -0.5], [1.0, float("nan")], [1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="--heads-add takes two weights >= 0"):
            check_reranker(["likelihood"], heads_add=bad)
    with pytest.raises(ValueError, match="--heads-choice must be add or top"):
        check_reranker(["likelihood"], heads_choice="sum")
    check_reranker(["likelihood"], heads="shipped")
    check_reranker(["likelihood"], heads="shipped", heads_add=[0.25, 1.0])
    out = subprocess.run([sys.executable, "-m", "secondthoughts", "realign", "Tom hits his brother.", "--heads", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode != 0 and "no heads.json" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    cfg = tmp_path / "decode.yaml"
    bad_files = (("heads_top: 0\n", "--heads-top must be >= 1"), ("heads_add: [1.0]\n", "--heads-add takes two weights"),
                 ("heads_choice: sum\n", "heads_choice"))  # fmt: skip
    for text, error in bad_files:
        cfg.write_text(text)  # a settings file is checked as the flags are
        out = subprocess.run([sys.executable, "-m", "secondthoughts", "realign", "Tom hits his brother.", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert out.returncode != 0 and error in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "secondthoughts", "realign", "Tom hits his brother.", "--heads-add", "1", "-2"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode != 0 and "--heads-add takes two weights >= 0" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.slow  # the embedded SmolLM2's first 24 layers
def test_shipped_heads_rate_a_fitting_act_above_a_splice_and_the_act_kept() -> None:
    heads = RH.RatingHeads.load(RH.heads_path("shipped"), device="cpu")  # fp32: the tolerances below
    ctx = "It's wrong to take things that are not yours. Sam borrowed his neighbor's ladder. Sam wants to paint his house."
    src = "Sam keeps the ladder and hides it behind his boxes."
    texts = ["Sam returns the ladder to his neighbor after painting his house.", "Sam returns the boxes ladder his neighbor behind the.",
             "Sam keeps the ladder and hides it behind the shed."]  # fmt: skip
    x = heads.score(ctx, src, texts)
    assert x.shape == (3, 2) and np.isfinite(x).all() and heads.score(ctx, src, []).shape == (0, 2)
    assert x[0, 1] > x[1, 1]  # coherence: a fitting sentence above a splice
    assert x[0, 0] > x[2, 0]  # align: returning the ladder above keeping it
    assert np.allclose(x[:1], heads.score(ctx, src, texts[:1]), atol=1e-4)  # padding changes no score
    import torch

    with torch.inference_mode():  # the shared prompt's cache gives what reading each text whole gives
        whole = heads([{"context": ctx, "source": src, "text": t} for t in texts]).numpy()
    assert np.allclose(x, whole, atol=1e-4)


@pytest.mark.slow
def test_best_of_lets_the_heads_choose_among_the_top(tmp_path: Path) -> None:
    from secondthoughts.best_of import choose_best
    from secondthoughts.coherence import Reranker
    from secondthoughts.realign import RealignResult

    ctx = "It's wrong to take things that are not yours. Sam borrowed his neighbor's ladder."
    src = "Sam keeps the ladder and hides it behind his boxes."
    texts = ["Sam keeps the ladder.", "Sam returns the ladder to his neighbor.", "Sam ladder the returns neighbor his.", "Sam thanks his neighbor.", src]

    def by_order(contexts: list[str], candidates: list[str]) -> list[float]:  # the first text scores best
        return [0.9 - 0.1 * texts.index(t) for t in candidates]

    heads = RH.RatingHeads.load(RH.heads_path("shipped"), device="cpu")
    cands = [RealignResult(context=ctx, source=src, mode="apply", text=t) for t in texts]
    plain = choose_best(cands, Reranker([by_order]))
    assert plain.text == texts[0] and "heads" not in plain.alternatives[0]
    top1 = choose_best(cands, Reranker([by_order], heads=heads, heads_choice="top", heads_top=1))
    assert top1.text == texts[0]
    chosen = choose_best(cands, Reranker([by_order], heads=heads, heads_choice="top", heads_top=2))
    rated = heads.score(ctx, src, texts[:4])  # the source, unchanged, is no candidate for the heads
    assert chosen.text == texts[RH.top_then_heads(np.log(by_order([], texts[:4])), rated, 2)] == texts[1]  # returning, not keeping
    assert [a["heads"]["align"] for a in chosen.alternatives[:4]] == pytest.approx(rated[:, 0].tolist(), abs=1e-5)
    assert "heads" not in chosen.alternatives[4]
    # No valid changed candidate but one: the heads do not run (nothing to choose between).
    one = [RealignResult(context=ctx, source=src, mode="apply", text=t, valid=t == texts[1]) for t in texts]
    alone = choose_best(one, Reranker([by_order], heads=heads))
    assert alone.text == texts[1] and all("heads" not in a for a in alone.alternatives)
    # Added to the score (log of by_order's scores, as Reranker gives them), every candidate may win.
    added = choose_best(cands, Reranker([by_order], heads=heads))  # the default: added, 0.25 x align + 0.5 x coherence
    assert added.text == texts[RH.heads_added(np.log(by_order([], texts[:4])), rated, (0.25, 0.5))]
    assert choose_best(cands, Reranker([by_order], heads=heads, heads_add=(0.0, 0.0))).text == texts[0]  # weights 0: the score's pick
    assert choose_best(cands, Reranker([by_order], heads=heads, heads_add=(0.0, 50.0))).text == texts[int(np.argmax(rated[:, 1]))]
    with pytest.raises(ValueError, match="--heads-top must be >= 1"):
        Reranker([by_order], heads=heads, heads_top=0)
