from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny

from secondthoughts import coherence_fit as F
from secondthoughts.cli import main
from secondthoughts.metrics import Fluency


@pytest.fixture(scope="module")
def fluency() -> Fluency:
    tok = tiny.tiny_tokenizer()
    return Fluency(tiny.tiny_model(tok), tok, "tiny")


def test_fit_is_the_penalised_log_loss_optimum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=200) > 0).astype(int)
    fit = F.FittedCoherence.fit(X, y, l2=2.0)
    # The gradient of sum log-loss + l2/2 |w|^2 vanishes at the weights returned.
    Z = (X - np.array(fit.mean)) / np.array(fit.scale)
    p = 1 / (1 + np.exp(-(Z @ np.array(fit.coef) + fit.intercept)))
    assert np.allclose(Z.T @ (p - y) + 2.0 * np.array(fit.coef), 0, atol=1e-6)
    assert abs((p - y).sum()) < 1e-6  # the intercept is not penalised
    assert fit.coef[0] > 0 > fit.coef[1] and ((fit.probability(X) > 0.5) == y).mean() > 0.85
    with pytest.raises(ValueError, match="both"):
        F.FittedCoherence.fit(X, np.ones(200))


def test_group_folds_keep_each_story_on_one_side():
    groups = [f"s{k // 3}" for k in range(60)]  # 20 stories, 3 versions each
    folds = F.group_folds(groups, 5)
    for g in set(groups):
        assert len({folds[k] for k, h in enumerate(groups) if h == g}) == 1
    assert sorted(np.bincount(folds).tolist()) == [12] * 5


def test_cross_validated_scores_come_from_fits_without_their_fold():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 2)), np.arange(40) % 2
    groups = [str(k // 2) for k in range(40)]
    held_out = F.cross_validated(X, y, groups, folds=4)
    folds = F.group_folds(groups, 4)
    test = folds == 2
    expect = F.FittedCoherence.fit(X[~test], y[~test]).logit(X[test])
    assert np.allclose(held_out[test], expect)


def test_features_read_the_text_alone_and_after_its_context(fluency):
    texts = ["Tom helps his brother .", "Tom helps his brother helps his brother", "Anna thanks the dog"]
    X = F.features(fluency, ["Anna is kind .", "", "Tom is kind ."], texts)
    assert X.shape == (3, len(F.FEATURES))
    col = {n: X[:, k] for k, n in enumerate(F.FEATURES)}
    assert col["words"].tolist() == [4, 7, 4]
    assert col["ends_sentence"].tolist() == [1, 0, 0]
    assert col["repeats_2gram"].tolist() == [0, 1, 0] and col["repeats_3gram"].tolist() == [0, 1, 0]
    assert abs(col["gain_from_context"][1]) < 1e-5  # no context: the same tokens alone
    assert np.allclose(col["gain_from_context"], col["mean_logp_in_context"] - col["mean_logp"])
    assert col["gain_from_context"][0] != 0 and (col["min_logp"] <= col["mean_logp"]).all()
    with pytest.raises(ValueError, match="contexts"):
        F.features(fluency, [""], texts)


def _labelled(path: Path, n: int = 24) -> Path:
    rows = []
    for k in range(n):
        good = k % 2 == 0
        text = "Tom helps his brother ." if good else "Tom helps his his his brother brother"
        rows.append({"id": f"story{k // 2}", "context": "Anna is kind .", "text": text, "label": int(good)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_coherence_command_writes_a_scorer_every_command_loads(tmp_path, tiny_model_dir, capsys):
    labels = _labelled(tmp_path / "labels.jsonl")
    out = tmp_path / "fit"
    assert main(["reward", "fit-coherence", "--labelled", str(labels), "--lm", str(tiny_model_dir), "--out", str(out), "--folds", "3"]) == 0
    said = capsys.readouterr().out
    assert "3-fold cross-validated AUC (folds of whole stories): 1.000" in said  # repeats separate these perfectly
    info = json.loads((out / "config.json").read_text())
    assert info["format"] == F.FORMAT and info["fitted_on"]["cross_validated_auc"]["groups"] == 12
    assert "| repeats_2gram |" in (out / "README.md").read_text()

    from secondthoughts.coherence import load_reranker
    from secondthoughts.reward import check_scorer, load_scorer

    check_scorer(str(out), "--coherence")
    scorer = load_scorer(str(out))
    good, bad = scorer(["Anna is kind ."] * 2, ["Tom helps his brother .", "Tom helps his his his brother brother"])
    assert 0 <= bad < 0.5 < good <= 1
    reranker = load_reranker([str(out)])
    assert len(reranker.coherence) == 1 and not reranker.alignment  # a coherence scorer, as its folder says
    with pytest.raises(FileExistsError):
        main(["reward", "fit-coherence", "--labelled", str(labels), "--lm", str(tiny_model_dir), "--out", str(out), "--debug"])


def test_fit_coherence_bad_input_is_one_line(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "c", "text": "t", "label": 1}\n{"context": "c", "text": "u", "label": "yes"}\n')
    assert main(["reward", "fit-coherence", "--labelled", str(bad), "--lm", str(tiny_model_dir), "--out", str(tmp_path / "o")]) != 0
    assert f"{bad}:2: field 'label'" in capsys.readouterr().err
    one = tmp_path / "one.jsonl"
    one.write_text('{"context": "c", "text": "t", "label": 1}\n')
    assert main(["reward", "fit-coherence", "--labelled", str(one), "--lm", str(tiny_model_dir), "--out", str(tmp_path / "o")]) != 0
    assert "needs both coherent (1) and broken (0)" in capsys.readouterr().err


def test_load_refuses_weights_for_other_features(tmp_path):
    fit = F.FittedCoherence.fit(np.random.default_rng(0).normal(size=(20, len(F.FEATURES))), np.arange(20) % 2)
    fit.save(tmp_path / "ok")
    assert F.FittedCoherence.load(tmp_path / "ok") == fit
    info = json.loads((tmp_path / "ok" / "config.json").read_text())
    info["features"] = info["features"][:-1]
    (tmp_path / "ok" / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="this version computes"):
        F.FittedCoherence.load(tmp_path / "ok")
    assert not F.is_fitted_folder(tmp_path / "missing")
