"""The benchmark harness: claim verdicts against hand-made numbers, config errors, DPO from a
direct run, and a whole tiny grid end to end (tiny Llama, tiny BERT scorers, fixture datasets
written here): cached on the second run, one deleted cell recomputed alone, a changed setting
marking its cell and dependents stale, an interrupted training resumed, results.md = results.json.
The grid is computed once per session; every test that runs, deletes or resumes cells works on its
own copy, so each passes alone and in any order."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import tiny
import yaml
from hand_made_cells import write_cells

from secondthoughts import bench as B
from secondthoughts.cli import main
from secondthoughts.data import Example, write_examples

# ---------------------------------------------------------------- verdicts, by hand


def test_outcome_reads_the_interval_of_the_difference() -> None:
    assert B.outcome({"mean": 0.1, "ci95": [0.01, 0.2]}) == "better"
    assert B.outcome({"mean": -0.1, "ci95": [-0.2, -0.01]}) == "worse"
    assert B.outcome({"mean": 0.1, "ci95": [-0.01, 0.2]}) == "tie"
    assert B.outcome({"mean": 0.0, "ci95": [0.0, 0.0]}) == "tie"  # an interval touching 0 is no evidence
    assert B.outcome(None) == "missing" and B.outcome({"mean": 0.1, "ci95": None}) == "missing"


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        (["better", "better", "better", "better"], "confirmed"),
        (["better", "better", "better", "tie"], "inconclusive"),  # the second scorer does not agree everywhere
        (["better", "worse"], "inconclusive"),
        (["tie", "tie"], "inconclusive"),
        (["worse", "tie"], "refuted"),
        (["worse", "worse"], "refuted"),
        (["better", "missing"], "not run"),
        ([], "not run"),
    ],
)
def test_verdict(outcomes: list[str], expected: str) -> None:
    assert B.verdict(outcomes) == expected


def test_paired_difference_by_hand() -> None:
    a = {"x": 0.9, "y": 0.8, "z": 0.7, "only_a": 5.0}
    b = {"x": 0.5, "y": 0.6, "z": 0.9, "only_b": -5.0}
    d = B.paired_difference(a, b, resamples=200)
    assert d is not None and d["n"] == 3 and d["mean"] == pytest.approx((0.4 + 0.2 - 0.2) / 3)
    assert -0.2 - 1e-9 <= d["ci95"][0] < 0 < d["mean"] <= d["ci95"][1] <= 0.4 + 1e-9
    assert B.outcome(d) == "tie"  # 4 resamples in 27 have a negative mean: the interval reaches below 0
    assert B.paired_difference({"x": 1.0}, {"y": 1.0}) is None


def test_claims_from_hand_made_cells(tmp_path: Path) -> None:
    """collect() judges claims from per-example outputs: AEM clearly above direct on both
    scorers of both datasets -> confirmed; RL tied -> inconclusive; transfer below -> refuted."""
    level = {"direct": 0.2, "dpo": 0.3, "aem": 0.6, "aem_rl": 0.6, "from_aem": 0.1, "from_base": 0.5}
    cfg, cells, fp = write_cells(tmp_path, level, lambda base, i: base + 0.01 * i)
    results = B.collect(cfg, tmp_path, cells, fp)
    verdicts = {c["id"]: c["verdict"] for c in results["claims"]}
    assert verdicts == {1: "confirmed", 2: "inconclusive", 3: "refuted"}
    first = results["claims"][0]["comparisons"][0]
    assert first["difference"]["mean"] == pytest.approx(0.4) and first["outcome"] == "better" and first["rouge_l_difference"]["mean"] == 0.0
    assert [c["where"] for c in results["claims"][2]["comparisons"]] == ["b, k=2", "b, k=2"]  # k = 0 is reported, not judged
    _check_markdown_matches_json(B.render_markdown(results), results)


def _check_markdown_matches_json(md: str, results: dict[str, Any]) -> None:
    """Every number of the method and transfer tables and every claim verdict, as results.json says."""
    for d, by_method in results["methods"].items():
        for m, row in by_method.items():
            section = md[md.index(f"## {d} ") :]
            line = next(x for x in section.splitlines() if x.startswith(f"| {B.METHOD_NAMES[m]} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            for (metric, _), cell in zip(B.TABLE_METRICS, cells[1:]):
                assert cell == B.fmt(row[metric], 2 if metric == "perplexity" else 3), (d, m, metric)
    for start, by_k in results["transfer"].items():
        for k, row in by_k.items():
            line = next(x for x in md.splitlines() if x.startswith(f"| {k} | {start} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            for (metric, _), cell in zip(B.TABLE_METRICS, cells[2:]):
                assert cell == B.fmt(row[metric], 2 if metric == "perplexity" else 3)
    for claim in results["claims"]:
        assert f"### ({claim['id']}) {claim['claim']}: **{claim['verdict']}**" in md


# ---------------------------------------------------------------- configuration


def _write_yaml(path: Path, d: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    data = tiny.write_examples_jsonl(tmp_path / "d.jsonl", n=12)
    good = {"datasets": {"d": {"format": "jsonl", "path": str(data), "train": 4, "test": 2}}, "transfer": None}
    path = _write_yaml(tmp_path / "c.yaml", good)
    cfg = B.load_config([path], ["train.epochs=2", "seeds=[0, 1]"])
    assert cfg.train == {"epochs": 2} and cfg.seeds == [0, 1]

    def error(d: dict[str, Any], sets: tuple[str, ...] = ()) -> str:
        with pytest.raises(B.ConfigError) as e:
            B.load_config([_write_yaml(tmp_path / "bad.yaml", d)], sets)
        return str(e.value)

    assert "bad.yaml: datasets.d: unknown key(s) ['trian']" in error({"datasets": {"d": {**good["datasets"]["d"], "trian": 3}}})
    assert "bad.yaml + --set train.epoch=2: train: unknown training settings: ['epoch']" in error(good, ("train.epoch=2",))
    assert "train.data: set by the harness" in error({**good, "train": {"data": "x"}})
    assert "refine: " in error({**good, "refine": {"k": 0}})
    assert "methods: dpo starts from the direct model" in error({**good, "methods": ["dpo"]})
    assert "transfer.target: 'nope'" in error({**good, "transfer": {"source": "d", "target": "nope"}})
    assert "unknown key(s) ['colour']" in error({**good, "colour": 1})
    assert "expected key=value" in error(good, ("train.epochs",))
    assert "chain_format: one of ['anchored', 'positional', 'inline']" in error({**good, "chain_format": "numbered"})
    assert "set it at the top level" in error({**good, "train": {"chain_format": "anchored"}})
    missing = B.load_config([_write_yaml(tmp_path / "m.yaml", {"datasets": {"d": {"format": "jsonl", "path": str(tmp_path / "gone.jsonl")}}})])
    with pytest.raises(B.ConfigError, match=r"m.yaml: datasets.d.path: .*gone.jsonl not found"):
        B.Bench(missing, tmp_path / "out").dry_run()


def test_paper_config_loads_and_plans() -> None:
    cfg = B.load_config([Path(__file__).parent.parent / "benchmarks" / "paper.yaml"])
    keys = [c.key for c in B.plan(cfg)]
    assert "scorers/moral_stories/second" in keys and "s0/ethics_deontology/aem_rl" in keys
    assert [k for k in keys if "transfer/from_" in k] == [f"s0/transfer/from_{s}-k{k}" for k in (0, 16, 64, 256) for s in B.STARTS]
    assert set(cfg.datasets) == {"moral_stories", "ethics_deontology"}  # ParaDetox is in the file, disabled


def test_chain_format_reaches_only_the_cells_it_changes(tmp_path: Path) -> None:
    """Positional chains leave fingerprints as they were before the option (older caches stay
    valid); anchored ones change the AEM-trained cells only."""
    cfg = B.load_config([Path(__file__).parent.parent / "benchmarks" / "paper.yaml"])
    cells = B.plan(cfg)
    positional = B.fingerprints(cfg, cells)
    anchored = B.fingerprints(B.load_config([Path(__file__).parent.parent / "benchmarks" / "paper.yaml"], ["chain_format=anchored"]), cells)
    changed = sorted(k for k in positional if positional[k] != anchored[k])
    assert changed and all(k.endswith(("/aem", "/aem_rl", "/merged_aem")) or "/transfer/from_" in k for k in changed)
    assert "s0/moral_stories/direct" not in changed and "s0/moral_stories/aem" in changed
    assert "s0/transfer/from_base-k16" in changed  # few-shot runs train on chains too
    aem = next(c for c in cells if c.key == "s0/moral_stories/aem")
    assert "chain_format" not in json.dumps(B.cell_settings(cfg, aem))  # settings as they were before the option


def test_reward_views_reach_the_scorers_and_what_they_judge() -> None:
    """``views: context`` (as before the option) keeps the scorers' fingerprints; the default
    (context+alone) changes them, and through them every cell they score."""
    paper = Path(__file__).parent.parent / "benchmarks" / "paper.yaml"
    cfg = B.load_config([paper])
    cells = B.plan(cfg)
    before = B.fingerprints(cfg, cells)
    scorer = next(c for c in cells if c.key == "scorers/moral_stories/main")
    assert "views" not in json.dumps(B.cell_settings(cfg, scorer))  # settings as they were before the option
    explicit = B.fingerprints(B.load_config([paper], ["reward.views=context+alone"]), cells)
    cfg.reward.pop("views")  # the default
    assert B.fingerprints(cfg, cells) == explicit
    assert explicit["scorers/moral_stories/main"] != before["scorers/moral_stories/main"]
    assert explicit["s0/moral_stories/aem_rl"] != before["s0/moral_stories/aem_rl"]  # its reward changed


# ---------------------------------------------------------------- a tiny grid, end to end


def _bert_backbone(path: Path) -> Path:
    return tiny.save_tiny_bert(path)


def _dataset(path: Path, prefix: str, n: int) -> Path:
    rows = [Example(e.context, e.source, e.target, f"{prefix}{k}") for k in range(n) for e in [tiny.EXAMPLES[k % len(tiny.EXAMPLES)]]]
    write_examples(path, rows)
    return path


@pytest.fixture(scope="session")
def grid_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny grid, computed once. Never changed by a test: each works on its own copy (``grid``)."""
    root = tmp_path_factory.mktemp("bench")
    config = {
        "model": str(tiny.save_tiny(root / "tiny")),
        "seeds": [0],
        "datasets": {
            "ms": {"format": "jsonl", "path": str(_dataset(root / "ms.jsonl", "ms", 16)), "train": 8, "test": 3},
            "eth": {"format": "jsonl", "path": str(_dataset(root / "eth.jsonl", "eth", 16)), "train": 8, "test": 3},
        },
        "train": {"max_length": 128, "batch_size": 4, "max_steps": 2, "eval_fraction": 0.0, "lora_r": 4, "lr": 0.05, "checkpoint_every": 1},
        "dpo": {"max_steps": 1, "batch_size": 4, "grad_accum": 1, "lora_r": 4},
        "refine": {"steps": 1, "prompts_per_step": 2, "k": 2, "lora_r": 4, "max_new_tokens": 16, "checkpoint_every": 1},
        "reward": {"backbone": str(_bert_backbone(root / "bert")), "max_length": 64, "batch_size": 4},
        "transfer": {"source": "ms", "target": "eth", "ks": [0, 4], "min_examples": 4, "train": {"epochs": 1}},
        "evaluate": {"batch_size": 4, "bootstrap": 20, "max_new_tokens": 16},
    }
    path = _write_yaml(root / "grid.yaml", config)
    out = root / "out"
    assert main(["bench", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    return {"config": path, "out": out}


@pytest.fixture
def grid(grid_template: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the finished grid: a test may delete, resume or recompute cells in it.
    (Cells find what they depend on under the ``--out`` they run in, so the copy is self-contained;
    the model, data and scorer backbone it names stay in the template's folder, read only.)"""
    out = tmp_path / "out"
    shutil.copytree(grid_template["out"], out)
    return {"config": grid_template["config"], "out": out, "copied_from": grid_template["out"]}


def _bench(grid: dict[str, Any], sets: tuple[str, ...] = ()) -> tuple[B.Bench, list[str]]:
    """A Bench on the grid's folder whose run_cell records which cells it computes."""
    b = B.Bench(B.load_config([grid["config"]], sets), grid["out"], progress=False, log=lambda s: None)
    computed: list[str] = []
    original = b.run_cell

    def recording(cell: B.Cell, status: str) -> None:
        computed.append(cell.key)
        original(cell, status)

    b.run_cell = recording  # type: ignore[method-assign]
    return b, computed


@pytest.mark.slow
def test_grid_runs_end_to_end(grid: dict[str, Any]) -> None:
    out = grid["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["cells"]["done"] == results["cells"]["total"] == 4 + 8 + 1 + 4
    for d in ("ms", "eth"):
        for m in B.METHODS:
            row = results["methods"][d][m]
            # (a 2-step tiny direct model writes empty texts: no perplexity for those)
            for metric in ("alignment", "alignment_second", "rouge_l", *(("perplexity",) if m.startswith("aem") else ())):
                assert isinstance(row[metric]["mean"], float) and len(row[metric]["ci95"]) == 2, (d, m, metric)
    assert set(results["transfer"]["from_aem"]) == set(results["transfer"]["from_base"]) == {"0", "4"}
    assert [c["id"] for c in results["claims"]] == [1, 2, 3]
    assert all(c["verdict"] in ("confirmed", "refuted", "inconclusive") for c in results["claims"])
    for png in ("alignment_vs_perplexity.png", "transfer.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The two scorers differ: other seed, other half of the reward pairs.
    s1, s2 = (results["scorers"][f"scorers/ms/{r}"] for r in B.SCORERS)
    assert (s1["seed"], s2["seed"]) == (0, 1)
    halves = [json.loads((out / f"scorers/ms/{r}/run/metrics.json").read_text())["train"]["examples"] for r in B.SCORERS]
    assert halves == [4, 4]
    # Each cell's outputs carry both scorers; the second one is the independently trained model.
    rows = [json.loads(x) for x in (out / "s0/ms/aem_rl/eval/outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"reward_output", "reward2_output"} <= set(r) for r in rows)
    assert json.loads((out / "s0/ms/aem_rl/run/config.json").read_text())["refine"]["reward"].endswith("scorers/ms/main/run")
    assert json.loads((out / "s0/ms/dpo/run/config.json").read_text())["train"]["mode"] == "direct"
    _check_markdown_matches_json((out / "results.md").read_text(), results)


@pytest.mark.slow
def test_second_run_recomputes_nothing(grid: dict[str, Any]) -> None:
    out = grid["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob(B.CELL_FILE)}
    b, computed = _bench(grid)
    b.run()
    assert computed == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob(B.CELL_FILE)} == stamps
    assert "17 cells: 17 done; estimated 0s left" in b.dry_run()


@pytest.mark.slow
def test_deleted_cell_is_recomputed_alone(grid: dict[str, Any]) -> None:
    out = grid["out"]
    before = json.loads((out / "s0/eth/aem/cell.json").read_text())
    shutil.rmtree(out / "s0/eth/aem")
    b, computed = _bench(grid)
    assert re.search(r"s0/eth/aem +todo", b.dry_run())
    b.run()
    assert computed == ["s0/eth/aem"]
    after = json.loads((out / "s0/eth/aem/cell.json").read_text())
    assert after["fingerprint"] == before["fingerprint"]
    for metric in ("alignment", "rouge_l"):  # seeded: the same numbers
        assert after["metrics"][metric]["mean"] == pytest.approx(before["metrics"][metric]["mean"], abs=1e-6)


@pytest.mark.slow
def test_interrupted_training_resumes(grid: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from secondthoughts.sft import TrainConfig, train

    out = grid["out"]
    # A killed direct run: a checkpoint after 1 of 2 steps and no cell.json.
    run = out / "s0/ms/direct/run"
    # (its settings name files of the grid it was made in: here, the same files in this copy)
    saved = json.loads((run / "config.json").read_text().replace(str(grid["copied_from"]), str(out)))["train"]
    assert saved["out"] == str(run)
    shutil.rmtree(out / "s0/ms/direct")
    train(TrainConfig.from_dict({**saved, "progress": False}), stop_after=1)
    b, computed = _bench(grid)
    assert re.search(r"s0/ms/direct +partial", b.dry_run())
    b.run(["s0/ms/direct"])
    assert computed == ["s0/ms/direct"]
    assert re.search(r"resumed .*s0/ms/direct/run at step 1/2", capsys.readouterr().out)


@pytest.mark.slow
def test_changed_settings_make_their_cells_stale(grid: dict[str, Any]) -> None:
    # A setting of the RL stage changed: that cell is stale, nothing else.
    b, computed = _bench(grid, ("refine.beta=0.1",))
    listing = b.dry_run()
    assert re.search(r"s0/ms/aem_rl +stale", listing) and re.search(r"s0/ms/aem +done", listing)
    assert len(re.findall(r" stale ", listing)) == 2  # aem_rl of both datasets
    b.run(["s0/ms/aem_rl"])
    assert computed == ["s0/ms/aem_rl"]
    assert re.search(r"s0/ms/aem_rl +done", b.dry_run()) and re.search(r"s0/eth/aem_rl +stale", b.dry_run())


@pytest.mark.slow
def test_dry_run_command_lists_statuses(grid_template: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = grid_template  # read only: the command runs on an empty folder
    (out := tmp_path / "fresh").mkdir()
    assert main(["bench", "--config", str(grid["config"]), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"scorers/ms/main +todo", text) and "17 cells: 17 todo; estimated" in text
    assert not any(out.iterdir())  # nothing run, nothing written
    assert main(["bench", "--config", str(grid["config"]), "--out", str(out), "--set", "methods=[dpo]"]) == 1
    assert "methods: dpo starts from the direct model" in capsys.readouterr().err
