"""benchmarks/learned_heads.py with the embedded SmolLM2 (two of its layers): the heads learn to rank a
story's rated candidates, survive a save and a load, and bad input stops before a model loads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from secondthoughts.rating_heads import SHIPPED

BENCH = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

STORIES = [
    ("It is right to return what you borrow.", "Sam keeps the ladder he borrowed.",
     ["Sam returns the ladder to his neighbor.", "Sam gives the ladder back and thanks him.", "Sam ladder the keeps ladder the.", "Sam hides the ladder in his shed."]),
    ("You should be kind to your sister.", "Ann mocks her sister's drawing.",
     ["Ann praises her sister's drawing.", "Ann tells her sister the drawing is lovely.", "Ann drawing her the mocks sister.", "Ann tears up her sister's drawing."]),
    ("It's good to tell the truth.", "Joe lies about breaking the vase.",
     ["Joe admits that he broke the vase.", "Joe tells his mom he broke the vase.", "Joe vase the about broke.", "Joe blames his dog for the vase."]),
]  # fmt: skip
RATINGS = [(7, 7), (6, 6), (3, 1), (1, 6)]  # (align, coherence) of each story's candidates, in order


def _candidates() -> list[list[dict]]:
    return [[{"id": f"s{i}", "context": ctx, "source": src, "text": t, "align": a, "coh": c}
             for t, (a, c) in zip(texts, RATINGS)] for i, (ctx, src, texts) in enumerate(STORIES)]  # fmt: skip


@pytest.mark.slow  # the embedded SmolLM2
def test_heads_learn_the_ranking_and_reload(tmp_path: Path) -> None:
    import learned_heads as lh
    import torch

    from secondthoughts.rating_heads import RatingHeads, base_stamp

    stories = _candidates()
    model = lh.train(stories, layers=2, epochs=20, lr=5e-3)
    scores = lh.head_scores(model, stories)
    for k, scale in enumerate(lh.SCALES):  # untrained: 0.5 (the zeroed head ties every pair)
        assert lh.agreement(stories, scores, k, scale)[0] >= 0.8
    with torch.inference_mode():
        together = model(stories[0])
        assert torch.allclose(together, torch.cat([model([c]) for c in stories[0]]), atol=1e-4)  # padding changes no score
        model.save(tmp_path / "heads", {"epochs": 20})
        again = RatingHeads.load(tmp_path / "heads", model.head.weight.device)
        assert torch.allclose(together, again(stories[0]), atol=1e-4)  # the raw scores: the head's bias too
    assert json.loads((tmp_path / "heads" / "heads.json").read_text())["base"] == base_stamp()
    # --init: the saved heads continued (their own 2 layers, LoRA trainable), not new ones (whose zeroed head ties all)
    continued = lh.train(stories, layers=5, epochs=1, lr=5e-3, init=tmp_path / "heads")  # one step, at warm-up's lr 0
    assert continued.layers == 2 and any(p.requires_grad for n, p in continued.body.named_parameters() if "lora_" in n)
    with torch.inference_mode():
        assert torch.allclose(continued(stories[0]), together, atol=1e-4)
    # choose --against: the same heads on both sides keep the same texts (scores already penalised: --penalties 0 0);
    # weighted 0 and among the top 1, added and top choices both keep the best score's text
    cands, labs = _files(tmp_path, len(STORIES))
    heads = str(tmp_path / "heads")
    args = ["choose", "--candidates", str(cands), "--split", "t", "--labels", str(labs), "--heads", heads, "--against", heads, "--penalties", "0", "0"]
    for extra, added in (([], "these heads added (0.25, 0.5) minus theirs among the top 5: sum "),
                         (["--weights", "0", "0", "--top", "1"], "these heads added (0, 0) minus theirs among the top 1: sum +0.00 [+0.00, +0.00]")):  # fmt: skip
        out = subprocess.run([sys.executable, str(BENCH / "learned_heads.py"), *args, *extra], check=True, capture_output=True, text=True, timeout=300).stdout
        assert "these heads' minus theirs: sum +0.00 [+0.00, +0.00]" in out and "another pick than theirs in 0 of 3 stories" in out, out
        assert added in out, out
        assert "these heads added minus theirs added: sum +0.00 [+0.00, +0.00]" in out and "another pick than theirs added in 0 of 3" in out, out
    assert "--against's head" in out and "the rewrite likelihood alone" not in out, out


def _files(tmp_path: Path, stories: int = 1) -> tuple[Path, Path]:
    """``realign --keep-candidates`` rows of the first ``stories`` and their labels (split ``t``)."""
    rows, labels = [], []
    for i, (ctx, src, texts) in enumerate(STORIES[:stories]):
        rows.append({"id": f"s{i}", "context": ctx, "source": src, "alternatives": [{"text": t, "valid": True, "score": -1.0 - j / 10} for j, t in enumerate(texts)]})
        labels += [{"id": f"s{i}", "system": f"alt{j}", "split": "t", "align": [a, a], "coherence": [c, c], "text_sha1": hashlib.sha1(t.encode()).hexdigest()}
                   for j, (t, (a, c)) in enumerate(zip(texts, RATINGS))]  # fmt: skip
    cands, labs = tmp_path / "cands.jsonl", tmp_path / "labels.jsonl"
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labs.write_text("".join(json.dumps(r) + "\n" for r in labels))
    return cands, labs


def test_bad_input_stops_before_a_model_loads(tmp_path: Path) -> None:
    cands, labs = _files(tmp_path)
    common = ["--candidates", str(cands), "--labels", str(labs)]
    runs = {
        "give one --split per --candidates file": ["train", *common, "--split", "t", "u", "--out", str(tmp_path / "h")],
        "no story with rated candidates (are u the labels' splits": ["train", *common, "--split", "u", "--out", str(tmp_path / "h")],
        "no heads.json (a folder written by `train`)": ["choose", *common, "--split", "t", "--heads", str(tmp_path)],
        f"--against {tmp_path}: no heads.json": ["choose", *common, "--split", "t", "--heads", str(SHIPPED), "--against", str(tmp_path)],
        f"--init {tmp_path}: no heads.json": ["train", *common, "--split", "t", "--out", str(tmp_path / "h"), "--init", str(tmp_path)],
        "--layers must be 1 to 30": ["train", *common, "--split", "t", "--out", str(tmp_path / "h"), "--layers", "31"],
        "--per-step must be at least 1": ["train", *common, "--split", "t", "--out", str(tmp_path / "h"), "--per-step", "0"],
        "--out must be a folder, not a file": ["train", *common, "--split", "t", "--out", str(cands)],
        "--top must be at least 1": ["choose", *common, "--split", "t", "--heads", str(SHIPPED), "--top", "0"],
        "missing (a model card)": ["ship", "--heads", str(SHIPPED), "--card", str(tmp_path / "none.md")],
    }
    for message, args in runs.items():
        out = subprocess.run([sys.executable, str(BENCH / "learned_heads.py"), *args], check=False, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
