"""An evaluation's report folder: ``report.md`` (summary table, speed, plots, example rows with
inline diffs), ``metrics.json``, ``outputs.jsonl`` and PNG plots, written atomically
(:func:`write_report`)."""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts.diffview import html_diff
from secondthoughts.edits import tokenize
from secondthoughts.metrics import OPS, is_missing, metric_value, missing


@dataclass
class Evaluation:
    """What ``evaluate`` measured: ``metrics`` (as written to metrics.json) and one row per
    example (as written to outputs.jsonl)."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- report


def markdown_diff(source: str, chain: Sequence[Any]) -> str:
    """The inline diff (``diffview.html_diff``: ``<del>`` removed, ``<ins>`` written) as one
    markdown table cell."""
    return html_diff(tokenize(source), chain).replace("|", "&#124;").replace("\n", " ")


def _esc(text: str) -> str:
    """HTML-escape for a markdown table cell (quotes need no escaping outside attributes)."""
    return html.escape(text, quote=False)


def _fmt(x: Any, digits: int = 3) -> str:
    if is_missing(x):
        return f"n/a ({x['missing']})"
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def cell(x: Any, digits: int = 3) -> str:
    """A number with its interval, e.g. ``0.612 [0.580, 0.644]``, or why it is missing."""
    if is_missing(x) or not isinstance(x, dict):
        return _fmt(x, digits)
    v, ci = metric_value(x), x.get("ci95")
    return _fmt(v, digits) + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _get(m: Any, *path: str) -> Any:
    for p in path:
        if is_missing(m):
            return m
        m = m[p]
    return m


def _chain_cell(c: Any, key: str) -> str:
    if is_missing(c):
        return _fmt(c)
    d = c[key]
    return f"{d['mean']:.2f} / {d['p50']:.0f} / {d['p90']:.0f}"


def _ops_cell(c: Any) -> str:
    return _fmt(c) if is_missing(c) else " / ".join(f"{c['operations'][op]:.0%}" for op in OPS)


def render_markdown(ev: Evaluation, shown: int = 6, plots: dict[str, Any] | None = None) -> str:
    m, info = ev.metrics, ev.metrics["info"]
    al, fl, fa, be, sp = m["alignment"], m["fluency"], m["faithfulness"], m["behaviour"], m["speed"]
    al2, co = m.get("alignment_second", missing("not measured")), m.get("coherence", missing("not measured"))
    out, ref = fa["outputs"], fa["sources_unchanged"]
    lines = [
        f"# Evaluation of `{info.get('model', 'a re-aligner')}`", "",
        (f"{info['examples']} examples from `{info.get('data', '?')}`{' (first ' + str(info['limit']) + ')' if info.get('limit') else ''}; "
         f"mode `{info['mode']}`, batch size {info['batch_size']}; reward model: `{info.get('reward') or 'none'}`; "
         f"fluency under: {fl['base_lm'] if not is_missing(fl) else 'none'}. "
         f"Brackets: bootstrap 95% intervals ({info['bootstrap_resamples']} resamples, seed {info['seed']})."), "",
        "## Summary", "",
        "| metric | sources | outputs | gold targets |", "|---|---|---|---|",
        f"| alignment: mean P(aligned) | {cell(_get(al, 'sources'))} | {cell(_get(al, 'outputs'))} | {cell(_get(al, 'targets'))} |",
        f"| outputs scored above their source | | {cell(_get(al, 'outputs_above_source'))} | |",
        f"| alignment, second scorer | {cell(_get(al2, 'sources'))} | {cell(_get(al2, 'outputs'))} | {cell(_get(al2, 'targets'))} |",
        f"| coherence: mean P(coherent) | {cell(_get(co, 'sources'))} | {cell(_get(co, 'outputs'))} | {cell(_get(co, 'targets'))} |",
        f"| coherence of outputs as a share of the gold targets' | | {cell(_get(co, 'outputs_vs_targets'))} | 1 |",
        f"| P(coherent) >= 0.5 | | {cell(_get(co, 'outputs_at_least_half'))} | |",
        f"| perplexity under the base LM | {cell(_get(fl, 'sources'), 2)} | {cell(_get(fl, 'outputs'), 2)} | {cell(_get(fl, 'targets'), 2)} |",
        f"| ROUGE-L F1 vs target (0-100) | {cell(_get(ref, 'rouge_l'), 1)} | {cell(_get(out, 'rouge_l'), 1)} | 100 |",
        f"| BLEU vs target | {cell(_get(ref, 'bleu'), 1)} | {cell(_get(out, 'bleu'), 1)} | 100 |",
        f"| SARI (0-100) | {cell(_get(ref, 'sari'), 1)} | {cell(_get(out, 'sari'), 1)} | |",
        f"| SARI keep / add / delete | {_sari_parts(ref)} | {_sari_parts(out)} | |",
        f"| chains that parse and apply | | {cell(be['valid'])} | |",
        f"| edits per chain: mean / median / p90 | | {_chain_cell(be['chains'], 'edits')} | {_chain_cell(be['gold_chains'], 'edits')} |",
        f"| tokens changed per chain: mean / median / p90 | | {_chain_cell(be['chains'], 'tokens_changed')} | {_chain_cell(be['gold_chains'], 'tokens_changed')} |",
        f"| operations: replace / delete / insert | | {_ops_cell(be['chains'])} | {_ops_cell(be['gold_chains'])} |",
        f"| share of the source kept | 1.000 | {_fmt(be['outputs']['kept'])} | {_fmt(be['targets']['kept'])} |",
        f"| identical to the source | 1.000 | {_fmt(be['outputs']['identical'])} | {_fmt(be['targets']['identical'])} |",
        f"| copies a context sentence | | {_fmt(be['outputs']['copies_context'])} | {_fmt(be['targets']['copies_context'])} |",
        "", ("The sources column scores each source as if it were the output (the do-nothing baseline); gold chains are "
             "inferred from source to target with costs (1, 1, 2)."), "",
        "## Speed", "",
        "| examples/s | new tokens/s | latency p50 | latency p95 | max | batch size |", "|---|---|---|---|---|---|",
        (f"| {_fmt(sp['examples_per_s'], 2)} | {_fmt(sp['new_tokens_per_s'], 1)} | {_fmt(sp['latency_s'].get('p50'), 2)} s | "
         f"{_fmt(sp['latency_s'].get('p95'), 2)} s | {_fmt(sp['latency_s']['max'], 2)} s | {sp['batch_size']} |"), "",
        "An example's latency is the wall time of the batch that produced it.",
    ]  # fmt: skip
    if not is_missing(be.get("truncated")) and be["truncated"]:
        lines.append(f"\n{be['truncated']:.1%} of the chains were cut by the token budget and closed after their last complete edit.")
    if not is_missing(be["generated_target_differs"]):
        lines.append(f"\nIn {be['generated_target_differs']:.1%} of the closed chains the generated target differs from the chain applied (outputs are the chain applied).")
    lines += ["", "## Plots", ""]
    for name, title in (("alignment", "Alignment before / after"), ("chain_lengths", "Chain lengths")):
        p = (plots or {}).get(name)
        lines.append(f"![{title}]({p})" if isinstance(p, str) else f"{title}: not drawn ({p['missing'] if is_missing(p) else 'no plot'})")
        lines.append("")
    lines += _example_rows(ev, shown)
    return "\n".join(lines) + "\n"


def _sari_parts(f: Any) -> str:
    return _fmt(f) if is_missing(f) else f"{f['sari_keep']:.1f} / {f['sari_add']:.1f} / {f['sari_delete']:.1f}"


def _shown_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``n`` rows (first and last included)."""
    if n == 0 or k <= 0:
        return []
    k = min(k, n)
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _example_rows(ev: Evaluation, shown: int) -> list[str]:
    from secondthoughts.chain_text import parse_compact
    from secondthoughts.edits import EditError

    idx = _shown_indices(len(ev.rows), shown)
    if not idx:
        return []
    lines = ["## Examples", "", "<del>removed</del>, <ins>written</ins>; rows spread evenly over the data.", "",
             "| id | context | output (diff from source) | gold target | reward (src → out) | ROUGE-L |", "|---|---|---|---|---|---|"]  # fmt: skip
    for i in idx:
        r = ev.rows[i]
        try:
            if r["valid"] is False:
                raise EditError(r["error"] or "invalid chain")
            diff = markdown_diff(r["source"], parse_compact(r["chain"], r["source"]) if r["chain"] else [])
        except EditError as e:  # the output is the source unchanged: say why
            diff = _esc(r["source"]) + f" <i>(invalid chain: {_esc(str(e))})</i>"
        rew = f"{r['reward_source']:.2f} → {r['reward_output']:.2f}" if "reward_output" in r else "n/a"
        ctx = r["context"] if len(r["context"]) <= 160 else r["context"][:157] + "..."
        cells = [_esc(str(r["id"])), _esc(ctx), diff, _esc(r["target"]), rew, f"{r['rouge_l']:.1f}"]
        lines.append("| " + " | ".join(c.replace("|", "&#124;").replace("\n", " ") for c in cells) + " |")
    return [*lines, ""]


# ---------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alignment(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Distributions of P(aligned) for sources, outputs and gold targets, means marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        bins = np.linspace(0, 1, 21)
        for key, label, color in (("reward_source", "sources", "tab:red"), ("reward_output", "outputs", "tab:blue"), ("reward_target", "gold targets", "tab:green")):
            vals = [r[key] for r in rows]
            ax.hist(vals, bins=bins, histtype="step", linewidth=1.8, color=color, label=f"{label} (mean {np.mean(vals):.2f})")
            ax.axvline(float(np.mean(vals)), color=color, linestyle="--", linewidth=1)
        ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("reward model P(aligned)")
        ax.set_ylabel("examples")
        ax.set_title(f"Alignment before / after re-alignment ({len(rows)} examples)")
        ax.legend(loc="upper center")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_chain_lengths(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Histogram of edits per chain: the model's valid chains beside the gold chains."""
    plt = _pyplot()
    model = Counter(r["edits"] for r in rows if r["valid"])
    gold = Counter(r["gold_edits"] for r in rows)
    xs = np.arange(0, max([*model, *gold, 0]) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        ax.bar(xs - 0.2, [model[x] for x in xs], width=0.4, label=f"model ({sum(model.values())} valid chains)", color="tab:blue")
        ax.bar(xs + 0.2, [gold[x] for x in xs], width=0.4, label="gold (costs 1,1,2)", color="tab:gray")
        ax.set_xlabel("edits per chain")
        ax.set_ylabel("examples")
        ax.set_title("Chain length")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _write_plots(ev: Evaluation, folder: Path) -> dict[str, Any]:
    plots: dict[str, Any] = {}
    if is_missing(ev.metrics["alignment"]):
        plots["alignment"] = ev.metrics["alignment"]
    else:
        plot_alignment(ev.rows, folder / "alignment.png")
        plots["alignment"] = "alignment.png"
    chains = ev.metrics["behaviour"]["chains"]
    if is_missing(chains):
        plots["chain_lengths"] = chains
    else:
        plot_chain_lengths(ev.rows, folder / "chain_lengths.png")
        plots["chain_lengths"] = "chain_lengths.png"
    return plots


def _json_safe(x: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); containers recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(ev: Evaluation, out: str | os.PathLike[str], *, shown: int = 6, overwrite: bool = False) -> Path:
    """Write report.md, metrics.json, outputs.jsonl and the plots into ``out``: built in a
    temporary folder beside it and renamed into place (:func:`atomic.write_dir`), so a reader never
    sees half a report. An existing ``out`` is replaced only with ``overwrite``."""
    from secondthoughts.atomic import write_dir

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")

    def write(tmp: Path) -> None:
        plots = _write_plots(ev, tmp)
        metrics = _json_safe({**ev.metrics, "plots": plots})
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(tmp / "outputs.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(_json_safe(r), ensure_ascii=False) + "\n" for r in ev.rows)
        (tmp / "report.md").write_text(render_markdown(ev, shown, plots), encoding="utf-8")

    return write_dir(out, write)  # the previous report (if any) is replaced in two renames
