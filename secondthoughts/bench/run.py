"""Running the benchmark: :class:`Bench` computes the cells that are not done (scorers, methods,
the merged AEM model, transfer runs), evaluates each, and rewrites the results after every cell."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from secondthoughts.bench.config import SCORERS, BenchConfig
from secondthoughts.bench.plan import (
    CELL_FILE,
    TRAINED_FILE,
    Cell,
    DataStats,
    Split,
    cell_settings,
    cell_status,
    data_stats,
    estimate_s,
    fingerprints,
    fmt_duration,
    method_key,
    plan,
    scorer_key,
    select,
    split_dataset,
    transfer_epochs,
)
from secondthoughts.bench.report import (
    collect,
    render_markdown,
    summarize_eval,
    write_plots,
)
from secondthoughts.data import Example, few_shot, write_examples
from secondthoughts.runs import find_checkpoint
from secondthoughts.atomic import write_atomic, write_dir

# ---------------------------------------------------------------- running cells


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


class Bench:
    """Runs the cells of one config into ``out``; see :mod:`secondthoughts.bench`."""

    def __init__(self, cfg: BenchConfig, out: str | os.PathLike[str], *, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out).resolve(), progress, log
        self.cells = plan(cfg)
        self.fp = fingerprints(cfg, self.cells)
        self._splits: dict[str, Split] = {}
        self._stats: dict[str, DataStats] = {}

    # ---- data

    def split(self, dataset: str) -> Split:
        if dataset not in self._splits:
            self._splits[dataset] = split_dataset(self.cfg, self.cfg.datasets[dataset])
        return self._splits[dataset]

    def stats(self) -> dict[str, DataStats]:
        for d in self.cfg.datasets:
            if d not in self._stats:
                cost_sets = self.cfg.train.get("cost_sets")
                self._stats[d] = data_stats(self.split(d).train, cost_sets)
        return self._stats

    def data_file(self, dataset: str, part: str, examples: Sequence[Example]) -> Path:
        """The examples as JSONL under ``out/data`` (what the trainers read); rewritten only when changed."""
        path = self.out / "data" / dataset / f"{part}.jsonl"
        text = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_examples(path, examples)
        return path

    # ---- status and planning

    def status(self, cells: Sequence[Cell] | None = None) -> list[tuple[Cell, str, float]]:
        """(cell, status, seconds): recorded wall time for done cells, else the estimate."""
        stats = self.stats()
        rows = []
        for c in cells or self.cells:
            st = cell_status(self.out, c, self.fp[c.key])
            secs = float(json.loads((self.out / c.key / CELL_FILE).read_text()).get("wall_s", 0.0)) if st == "done" else estimate_s(self.cfg, c, stats)
            rows.append((c, st, secs))
        return rows

    def dry_run(self, patterns: Sequence[str] = ()) -> str:
        rows = self.status(select(self.cells, patterns))
        width = max(len(c.key) for c, _, _ in rows)
        lines = [f"{'cell':<{width}}  {'status':<8} {'time':>8}"]
        for c, st, secs in rows:
            lines.append(f"{c.key:<{width}}  {st:<8} {fmt_duration(secs):>8}{'' if st == 'done' else ' (est.)'}")
        left = sum(s for _, st, s in rows if st != "done")
        counts = {k: sum(st == k for _, st, _ in rows) for k in ("done", "partial", "stale", "todo")}
        lines.append(f"{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) +
                     f"; estimated {fmt_duration(left)} left at {self.cfg.speeds.train_tokens_per_s:g} training tokens/s, "
                     f"{self.cfg.speeds.generate_tokens_per_s:g} generated tokens/s")  # fmt: skip
        return "\n".join(lines)

    def run(self, patterns: Sequence[str] = ()) -> dict[str, Any]:
        """Compute every cell that is not done, rewriting the results after each; returns them."""
        from tqdm.auto import tqdm

        rows = self.status(select(self.cells, patterns))
        todo = [(c, st, est) for c, st, est in rows if st != "done"]
        self.log(f"bench: {len(rows)} cells, {len(rows) - len(todo)} done, {len(todo)} to compute (estimated {fmt_duration(sum(e for *_, e in todo))})")
        spent, estimated = 0.0, 0.0
        bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not self.progress, dynamic_ncols=True, position=0)
        for i, (cell, st, est) in enumerate(todo):
            # Remaining estimate, scaled by how this session's cells compared with their estimates.
            ratio = spent / estimated if estimated else 1.0
            eta = ratio * sum(e for *_, e in todo[i:])
            self.log(f"[{i + 1}/{len(todo)}] {cell.key} ({st}): estimated {fmt_duration(ratio * est)}; ETA for the rest {fmt_duration(eta)}")
            t0 = time.perf_counter()
            self.run_cell(cell, st)
            spent += time.perf_counter() - t0
            estimated += est
            bar.update(1)
            self.write_results()
        bar.close()
        return self.write_results()

    def run_cell(self, cell: Cell, status: str) -> None:
        folder = self.out / cell.key
        if status == "stale":  # settings changed: start the cell over
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for dep in cell.deps:
            if cell_status(self.out, next(c for c in self.cells if c.key == dep), self.fp[dep]) != "done":
                raise RuntimeError(f"{cell.key}: its dependency {dep} is not finished")
        t0 = time.perf_counter()
        previous = _trained_s(folder)
        runner = {"scorer": self._scorer, "method": self._method, "merge": self._merge, "transfer": self._transfer}[cell.kind]
        metrics = runner(cell, folder)
        record = {
            "key": cell.key, "fingerprint": self.fp[cell.key], **{k: v for k, v in asdict(cell).items() if k != "key"},
            "wall_s": previous + time.perf_counter() - t0 if previous else time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "metrics": metrics, "settings": cell_settings(self.cfg, cell),
        }  # fmt: skip
        _write_json(folder / CELL_FILE, record)

    # ---- the kinds of cell

    def _scorer(self, cell: Cell, folder: Path) -> dict[str, Any]:
        from secondthoughts import reward, reward_eval, reward_train

        split = self.split(cell.dataset)
        seed = self.cfg.scorer_seeds[SCORERS.index(cell.role)]
        examples = split.reward[cell.role]
        config = reward.RewardConfig(**{**self.cfg.reward, "seed": seed})
        model, stats = reward_train.train(config, examples, progress=self.progress)
        test = reward_eval.evaluate(model, split.test)
        model.save(folder / "run", {"train": stats, "test": test})
        return {"seed": seed, "pairs": len(examples), "test": test}

    def _method(self, cell: Cell, folder: Path) -> dict[str, Any]:
        assert cell.seed is not None
        split = self.split(cell.dataset)
        train_file = self.data_file(cell.dataset, "train", split.train)
        run = folder / "run"
        if not (folder / TRAINED_FILE).is_file():
            t0 = time.perf_counter()
            if cell.method in ("direct", "aem"):
                chains = {} if cell.method == "direct" else {"mode": "coe", "chain_format": self.cfg.chain_format}
                self._sft(run, {**self.cfg.train, "data": str(train_file), "mode": "direct", **chains, "model": self.cfg.model, "seed": cell.seed})
            elif cell.method == "dpo":
                from secondthoughts.dpo import DPOSettings, target_over_source, train_dpo

                direct = self.out / method_key(cell.seed, cell.dataset, "direct") / "run"
                train_dpo(direct, target_over_source(split.train), run, DPOSettings.from_dict(self.cfg.dpo), seed=cell.seed, progress=self.progress)
            else:
                self._refine(cell, run, train_file)
            _write_json(folder / TRAINED_FILE, {"wall_s": time.perf_counter() - t0})
        return self._evaluate(run, cell.dataset, folder)

    def _sft(self, run: Path, settings: dict[str, Any]) -> None:
        from secondthoughts.sft import TrainConfig, train

        config = TrainConfig.from_dict({**settings, "out": str(run), "progress": self.progress})
        resume = (run / "config.json").is_file() and find_checkpoint(run) is not None
        if resume:
            try:
                train(config, resume=True)
                return
            except ValueError as e:  # settings differ from the interrupted run's: start over
                self.log(f"  {run}: cannot resume ({e}); starting over")
        shutil.rmtree(run, ignore_errors=True)
        train(config)

    def _refine(self, cell: Cell, run: Path, train_file: Path) -> None:
        from secondthoughts.refine import RefineConfig, refine

        assert cell.seed is not None
        config = RefineConfig.from_dict({
            **self.cfg.refine, "policy": str(self.out / method_key(cell.seed, cell.dataset, "aem") / "run"),
            "reward": str(self.out / scorer_key(cell.dataset, "main") / "run"), "data": str(train_file),
            "out": str(run), "seed": cell.seed, "progress": self.progress,
        })  # fmt: skip
        if (run / "config.json").is_file() and find_checkpoint(run) is not None:
            try:
                refine(config, resume=True)
                return
            except ValueError as e:
                self.log(f"  {run}: cannot resume ({e}); starting over")
        shutil.rmtree(run, ignore_errors=True)
        refine(config)

    def _merge(self, cell: Cell, folder: Path) -> dict[str, Any]:
        """The source dataset's AEM model with its adapter merged: the start of the transfer runs."""
        from secondthoughts import models

        assert cell.seed is not None and self.cfg.transfer is not None
        aem = self.out / method_key(cell.seed, self.cfg.transfer.source, "aem") / "run"
        model, tok = models.load(str(aem), device="cpu")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()

        def write(p: Path) -> None:
            model.save_pretrained(p, safe_serialization=True)
            tok.save_pretrained(p)

        write_dir(folder / "model", write)
        return {"from": str(aem)}

    def _transfer(self, cell: Cell, folder: Path) -> dict[str, Any]:
        assert cell.seed is not None and cell.k is not None and self.cfg.transfer is not None
        t = self.cfg.transfer
        run = folder / "run"
        if cell.k == 0 and cell.start == "aem":
            run = self.out / method_key(cell.seed, t.source, "aem") / "run"  # no training: the source model as is
        elif not (folder / TRAINED_FILE).is_file():
            t0 = time.perf_counter()
            start = str(self.out / f"s{cell.seed}/transfer/merged_aem" / "model") if cell.start == "aem" else self.cfg.model
            settings = {**self.cfg.train, **t.train, "mode": "coe", "chain_format": self.cfg.chain_format, "model": start, "seed": cell.seed}
            if cell.k == 0:
                self._untrained(run, settings)
            else:
                shots = few_shot(self.split(t.target).pool, cell.k, cell.seed)
                data = self.data_file(t.target, f"fewshot-s{cell.seed}-k{cell.k}", shots)
                self._sft(run, {**settings, "data": str(data), "eval_fraction": 0.0, "epochs": transfer_epochs(self.cfg, cell.k), "max_steps": 0})
            _write_json(folder / TRAINED_FILE, {"wall_s": time.perf_counter() - t0})
        return self._evaluate(run, t.target, folder)

    def _untrained(self, run: Path, settings: dict[str, Any]) -> None:
        """k = 0 from the base model: the base with the edit tokens and a zero LoRA, as a run folder."""
        from secondthoughts.sft import TrainConfig, build_model, save_model

        config = TrainConfig.from_dict({**settings, "out": str(run), "progress": False})
        model, tok, _ = build_model(config)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        save_model(model, tok, run / "model", config.model)
        (run / "config.json").write_text(json.dumps({"train": asdict(config), "note": "untrained: k = 0"}, indent=2), encoding="utf-8")
        (run / "metrics.jsonl").write_text("", encoding="utf-8")

    # ---- evaluation

    def _evaluate(self, run: Path, dataset: str, folder: Path) -> dict[str, Any]:
        """Re-align the test pairs, score with both scorers, write ``eval/``; the cell's summary."""
        ev_dir = folder / "eval"
        if not (ev_dir / "metrics.json").is_file():
            from secondthoughts.evaluate import evaluate_run, write_report

            e = self.cfg.evaluate
            test = self.split(dataset).test
            gen = {"max_new_tokens": e.max_new_tokens} if e.max_new_tokens else {}
            main_run, second_run = (self.out / scorer_key(dataset, r) / "run" for r in SCORERS)
            ev = evaluate_run(run, test, reward_run=main_run, second_reward_run=str(second_run), coherence_run=e.coherence or None,
                              base_lm=self.cfg.model, batch_size=e.batch_size, resamples=e.bootstrap,
                              seed=0, progress=self.progress, info={"data": f"{dataset} test ({len(test)} pairs)"}, **gen)  # fmt: skip
            ev.metrics["alignment_second"]["scorer"] = str(second_run)
            write_report(ev, ev_dir, overwrite=True)
        return summarize_eval(json.loads((ev_dir / "metrics.json").read_text(encoding="utf-8")))

    # ---- results

    def write_results(self) -> dict[str, Any]:
        results = collect(self.cfg, self.out, self.cells, self.fp)
        _write_json(self.out / "results.json", results)
        plots = write_plots(results, self.out)
        (self.out / "results.md").write_text(render_markdown(results, plots), encoding="utf-8")
        return results


def _trained_s(folder: Path) -> float:
    try:
        return float(json.loads((folder / TRAINED_FILE).read_text())["wall_s"])
    except (OSError, ValueError, KeyError):
        return 0.0

