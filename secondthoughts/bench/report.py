"""The benchmark's results: finished cells summarized and compared (paired bootstrap intervals of
per-example differences, claim verdicts) into ``results.json`` (:func:`collect`), and
``results.md`` and the plots rendered from that JSON alone (:func:`render_markdown`)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts.bench.config import (
    METHOD_NAMES,
    METHODS,
    METRICS,
    PER_EXAMPLE,
    SCORERS,
    STARTS,
    BenchConfig,
)
from secondthoughts.bench.plan import (
    CELL_FILE,
    Cell,
    cell_status,
    fmt_duration,
    method_key,
    scorer_key,
    transfer_key,
)
from secondthoughts.plots import save_png

# ---------------------------------------------------------------- summaries and statistics


def _interval(x: Any) -> dict[str, Any] | None:
    """``{"mean", "ci95"}`` from an evaluate.py field (headline or mean_ci), None when missing."""
    if not isinstance(x, dict) or "missing" in x:
        return None
    value = next((x[k] for k in ("value", "mean", "corpus") if k in x), None)
    return None if value is None else {"mean": value, "ci95": x.get("ci95")}


def summarize_eval(m: Mapping[str, Any]) -> dict[str, Any]:
    """The cell's metrics (mean and 95% interval each) from an eval ``metrics.json``."""
    h = m["headline"]
    second = m.get("alignment_second", {})
    first = m.get("alignment", {})
    coh = m.get("coherence") or {}
    coh = {} if "missing" in coh else coh
    return {
        "alignment": _interval(h["alignment"]),
        "alignment_second": _interval(second.get("outputs")),
        "coherence": _interval(coh.get("outputs")),
        "perplexity": _interval(h["perplexity"]),
        "rouge_l": _interval(h["rouge_l"]),
        "bleu": _interval(h["bleu"]),
        "sari": _interval(h["sari"]),
        "valid": _interval(h["valid"]),
        "reference": {
            "source": {"alignment": _interval(first.get("sources")), "alignment_second": _interval(second.get("sources")), "coherence": _interval(coh.get("sources"))},
            "target": {"alignment": _interval(first.get("targets")), "alignment_second": _interval(second.get("targets")), "coherence": _interval(coh.get("targets"))},
        },
        "examples": m["info"]["examples"],
        "mode": m["info"]["mode"],
    }


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """Mean of ``a[i] - b[i]`` over the keys both have, with a bootstrap 95% interval."""
    from secondthoughts.metrics import bootstrap_ci

    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    ci = bootstrap_ci(len(d), lambda i: float(d[i].mean()), resamples=resamples, seed=seed)
    return {"mean": float(d.mean()), "ci95": ci, "n": len(d)}


def outcome(diff: Mapping[str, Any] | None) -> str:
    """``better`` / ``worse`` when the 95% interval of the difference excludes 0, else ``tie``;
    ``missing`` when there is no interval."""
    if not diff or not diff.get("ci95"):
        return "missing"
    lo, hi = diff["ci95"]
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


def verdict(outcomes: Sequence[str]) -> str:
    """A claim over several comparisons (datasets x scorers, or k x scorers):

    - ``confirmed``: every comparison is ``better`` (so both scorers agree, everywhere);
    - ``refuted``: at least one is ``worse`` and none ``better``;
    - ``inconclusive``: anything else (ties, mixed results);
    - ``not run``: a comparison is missing (its cells are not finished or not configured).
    """
    if not outcomes or "missing" in outcomes:
        return "not run"
    if all(o == "better" for o in outcomes):
        return "confirmed"
    if "worse" in outcomes and "better" not in outcomes:
        return "refuted"
    return "inconclusive"


def _per_example(out: Path, key: str) -> dict[str, dict[str, float]]:
    """metric -> {example id -> value} from a cell's eval/outputs.jsonl."""
    path = out / key / "eval" / "outputs.jsonl"
    values: dict[str, dict[str, float]] = {m: {} for m in PER_EXAMPLE}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for metric, fieldname in PER_EXAMPLE.items():
            if row.get(fieldname) is not None:
                values[metric][row["id"]] = float(row[fieldname])
    return values


def _pooled(cells: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Across seeds: the mean of the seeds' means; the interval is the one cell's, or the
    envelope of the seeds' intervals (conservative) when there are several."""
    vals = [c["metrics"].get(metric) for c in cells]
    vals = [v for v in vals if v]
    if not vals:
        return None
    if len(vals) == 1:
        return {**vals[0], "seeds": 1}
    cis = [v["ci95"] for v in vals if v.get("ci95")]
    ci = [min(c[0] for c in cis), max(c[1] for c in cis)] if len(cis) == len(vals) else None
    return {"mean": float(np.mean([v["mean"] for v in vals])), "ci95": ci, "seeds": len(vals), "per_seed": [v["mean"] for v in vals]}


CLAIMS = {
    1: "AEM (chains of edits) re-aligns text better than direct fine-tuning",
    2: "RL refinement improves AEM",
    3: "AEM transfers to a new value dataset from few examples (better than training the base model on the same k)",
}


def collect(cfg: BenchConfig, out: Path, cells: Sequence[Cell], fp: Mapping[str, str]) -> dict[str, Any]:
    """results.json: finished cells, aggregates per method and dataset, transfer curve, claims."""
    done: dict[str, dict[str, Any]] = {}
    for c in cells:
        if cell_status(out, c, fp[c.key]) == "done":
            done[c.key] = json.loads((out / c.key / CELL_FILE).read_text(encoding="utf-8"))
    resamples = cfg.evaluate.bootstrap or 1000
    per_ex: dict[str, dict[str, dict[str, float]]] = {}

    def values(key: str, metric: str, seed: int) -> dict[str, float]:
        if key not in per_ex:
            per_ex[key] = _per_example(out, key)
        return {f"s{seed}:{i}": v for i, v in per_ex[key][metric].items()}  # pool seeds as distinct pairs

    def compare(keys_a: Sequence[str], keys_b: Sequence[str], seeds: Sequence[int], metric: str) -> dict[str, Any] | None:
        if not all(k in done for k in (*keys_a, *keys_b)):
            return None
        a: dict[str, float] = {}
        b: dict[str, float] = {}
        for ka, kb, s in zip(keys_a, keys_b, seeds):
            a.update(values(ka, metric, s))
            b.update(values(kb, metric, s))
        return paired_difference(a, b, resamples=resamples)

    methods: dict[str, dict[str, Any]] = {}
    for d in cfg.datasets:
        methods[d] = {}
        for m in (m for m in METHODS if m in cfg.methods):
            cs = [done[k] for k in (method_key(s, d, m) for s in cfg.seeds) if k in done]
            if cs:
                methods[d][m] = {metric: _pooled(cs, metric) for metric in METRICS} | {
                    "wall_s": sum(c["wall_s"] for c in cs), "seeds": [c["seed"] for c in cs],
                    "reference": cs[0]["metrics"]["reference"]}  # fmt: skip

    def claim(cid: int, pairs: list[tuple[str, str, str, list[str], list[str]]]) -> dict[str, Any]:
        comps = []
        for label, a, b, keys_a, keys_b in pairs:
            # context beside the verdict, not part of it: what the claim costs in fidelity and coherence
            rouge = compare(keys_a, keys_b, cfg.seeds, "rouge_l")
            coh = compare(keys_a, keys_b, cfg.seeds, "coherence")
            for metric in ("alignment", "alignment_second"):
                diff = compare(keys_a, keys_b, cfg.seeds, metric)
                comps.append({"where": label, "a": a, "b": b, "metric": metric, "difference": diff, "outcome": outcome(diff),
                              "rouge_l_difference": rouge, "coherence_difference": coh, "coherence_outcome": outcome(coh)})
        return {"id": cid, "claim": CLAIMS[cid], "verdict": verdict([c["outcome"] for c in comps]), "comparisons": comps}

    claims = []
    for cid, (a, b) in ((1, ("aem", "direct")), (2, ("aem_rl", "aem"))):
        if a in cfg.methods and b in cfg.methods:
            claims.append(claim(cid, [(d, a, b, [method_key(s, d, a) for s in cfg.seeds], [method_key(s, d, b) for s in cfg.seeds]) for d in cfg.datasets]))
    transfer: dict[str, Any] = {}
    if cfg.transfer is not None:
        t = cfg.transfer
        for start in STARTS:
            transfer[f"from_{start}"] = {}
            for k in sorted(t.ks):
                cs = [done[key] for key in (transfer_key(s, start, k) for s in cfg.seeds) if key in done]
                if cs:
                    transfer[f"from_{start}"][str(k)] = {metric: _pooled(cs, metric) for metric in METRICS} | {"wall_s": sum(c["wall_s"] for c in cs)}
        claims.append(claim(3, [(f"{t.target}, k={k}", f"from_aem k={k}", f"from_base k={k}", [transfer_key(s, "aem", k) for s in cfg.seeds],
                                 [transfer_key(s, "base", k) for s in cfg.seeds]) for k in sorted(t.ks) if k > 0]))  # fmt: skip
    scorers = {key: done[key]["metrics"] for key in (scorer_key(d, r) for d in cfg.datasets for r in SCORERS) if key in done}
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {"sources": cfg.sources, "model": cfg.model, "seeds": cfg.seeds, "methods": cfg.methods,
                   "datasets": {n: asdict(s) for n, s in cfg.datasets.items()}, "transfer": asdict(cfg.transfer) if cfg.transfer else None,
                   "train": cfg.train, "dpo": cfg.dpo, "refine": cfg.refine, "reward": cfg.reward, "evaluate": asdict(cfg.evaluate)},
        "hardware": hardware(),
        "cells": {"total": len(cells), "done": len(done), "wall_s": sum(c.get("wall_s", 0.0) for c in done.values()),
                  "per_cell": {k: {"wall_s": c["wall_s"], "finished": c["finished"]} for k, c in done.items()}},
        "scorers": scorers,
        "methods": methods,
        "transfer": transfer,
        "claims": claims,
    }  # fmt: skip


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- report


def fmt(x: Any, digits: int = 3) -> str:
    """A metric as ``mean [lo, hi]``; ``-`` when absent. results.md uses only this formatting."""
    if not x:
        return "-"
    ci = x.get("ci95")
    body = f"{x['mean']:.{digits}f}"
    return f"{body} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else body


def _diff(x: Any) -> str:
    if not x:
        return "-"
    return f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]" if x.get("ci95") else f"{x['mean']:+.3f}"


TABLE_METRICS = (("alignment", "alignment (main scorer)"), ("alignment_second", "alignment (second scorer)"),
                 ("coherence", "coherence"), ("perplexity", "perplexity"), ("rouge_l", "ROUGE-L"))  # fmt: skip


def render_markdown(results: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """results.md, from results.json alone."""
    c = results["config"]
    cells = results["cells"]
    lines = [
        "# Benchmark: Second Thoughts claims", "",
        f"Config: `{' + '.join(c['sources'])}`; base model `{c['model']}`; seeds {c['seeds']}; generated {results['generated']}.",
        (f"Cells finished: {cells['done']} of {cells['total']}; compute time of the finished cells {fmt_duration(cells['wall_s'])} "
        f"on {results['hardware'].get('gpu') or str(results['hardware']['cpu_count']) + ' CPU cores'} ({results['hardware']['platform']})."), "",
        ("Each number is the mean over the test pairs with a 95% bootstrap interval. Alignment is the scorer's P(aligned) of the "
        "re-aligned text; the main scorer is the RL reward, the second one was trained independently (other seed, other half of the "
        "data). Perplexity is under the base model; ROUGE-L (0-100) against the gold aligned text."), "",
        "## Claims", "",
    ]  # fmt: skip
    for cl in results["claims"]:
        lines += [f"### ({cl['id']}) {cl['claim']}: **{cl['verdict']}**", "",
                  "| where | comparison | scorer | difference in alignment | outcome | difference in ROUGE-L | difference in coherence |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for cmp in cl["comparisons"]:
            rouge, coh = _diff(cmp.get("rouge_l_difference")), _diff(cmp.get("coherence_difference"))
            scorer = "main" if cmp["metric"] == "alignment" else "second"
            lines.append(f"| {cmp['where']} | {cmp['a']} - {cmp['b']} | {scorer} | {_diff(cmp['difference'])} | {cmp['outcome']} | {rouge} | {coh} |")
        coh_out = sorted({c.get("coherence_outcome", "missing") for c in cl["comparisons"]})
        lines += ["", f"Coherence in this claim: {', '.join(coh_out)} (paired 95% intervals of P(coherent); "
                  "`missing` without `evaluate.coherence` in the config).", ""]
    lines += [("Verdicts: *confirmed* when every paired 95% interval (per dataset or k, and per scorer) lies above 0; *refuted* when "
              "at least one lies below 0 and none above; otherwise *inconclusive*; *not run* while cells are missing."), ""]  # fmt: skip
    for d, by_method in results["methods"].items():
        spec = c["datasets"][d]
        lines += [f"## {d} ({spec['train']} training pairs, {spec['test']} test pairs)", "",
                  "| method | " + " | ".join(name for _, name in TABLE_METRICS) + " | time |", "|---" * (len(TABLE_METRICS) + 2) + "|"]  # fmt: skip
        for m, row in by_method.items():
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(fmt(row[k], 2 if k == "perplexity" else 3) for k, _ in TABLE_METRICS) + f" | {fmt_duration(row['wall_s'])} |")
        ref = next(iter(by_method.values()), {}).get("reference")
        if ref:
            for name, label in (("source", "unchanged source"), ("target", "gold aligned text")):
                lines.append(f"| *{label}* | {fmt(ref[name]['alignment'])} | {fmt(ref[name]['alignment_second'])} | | | |")
        lines.append("")
    if results["transfer"]:
        t = c["transfer"]
        lines += [f"## Few-shot transfer: {t['source']} -> {t['target']}", "",
                  "| k | start | " + " | ".join(name for _, name in TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 2) + "|"]  # fmt: skip
        for start, by_k in results["transfer"].items():
            for k, row in by_k.items():
                lines.append(f"| {k} | {start} | " + " | ".join(fmt(row[m], 2 if m == "perplexity" else 3) for m, _ in TABLE_METRICS) + " |")
        lines.append("")
    if results["scorers"]:
        lines += ["## Scorers (held-out test pairs)", "", "| scorer | seed | training pairs | accuracy | target above source |", "|---|---|---|---|---|"]
        for key, s in results["scorers"].items():
            lines.append(f"| {key} | {s['seed']} | {s['pairs']} | {s['test'].get('accuracy', 0):.3f} | {s['test'].get('pairwise_accuracy', 0):.3f} |")
        lines.append("")
    for name, path in (plots or {}).items():
        lines += [f"![{name}]({path})", ""]
    return "\n".join(lines)


def write_plots(results: Mapping[str, Any], out: Path) -> dict[str, str]:
    """alignment_vs_perplexity.png (one point per method and dataset) and transfer.png (alignment over k)."""
    from secondthoughts.plots import line_plot

    plots: dict[str, str] = {}
    points = [(d, m, row) for d, by in results["methods"].items() for m, row in by.items() if row.get("alignment") and row.get("perplexity")]
    if points:
        _scatter(out / "alignment_vs_perplexity.png", points)
        plots["alignment vs perplexity"] = "alignment_vs_perplexity.png"
    if any(results["transfer"].values()):
        series = {}
        for start, by_k in results["transfer"].items():
            for metric, label in (("alignment", "main scorer"), ("alignment_second", "second scorer")):
                ks = [int(k) for k, row in by_k.items() if row.get(metric)]
                series[f"{start.replace('_', ' ')} ({label})"] = (ks, [by_k[str(k)][metric]["mean"] for k in ks])
        line_plot(out / "transfer.png", series, xlabel="k (target training examples)", ylabel="alignment: mean P(aligned)", title="Few-shot transfer")
        plots["transfer curve"] = "transfer.png"
    return plots


def _scatter(path: Path, points: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    markers = dict(zip(dict.fromkeys(d for d, _, _ in points), "os^Dv<>"))
    colors = dict(zip(METHODS, ("tab:gray", "tab:purple", "tab:blue", "tab:green")))
    try:
        for d, m, row in points:
            x, y = row["perplexity"], row["alignment"]
            xerr = [[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]] if x.get("ci95") else None
            yerr = [[y["mean"] - y["ci95"][0]], [y["ci95"][1] - y["mean"]]] if y.get("ci95") else None
            ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, fmt=markers[d], color=colors[m], capsize=3, label=f"{METHOD_NAMES[m]}, {d}")
        ax.set_xlabel("perplexity under the base model (lower: more fluent)")
        ax.set_ylabel("alignment: mean P(aligned), main scorer")
        ax.set_title("Alignment against fluency (95% intervals)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)
