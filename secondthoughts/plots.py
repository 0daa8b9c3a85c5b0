"""PNG curves for run folders (matplotlib, Agg: no display needed), written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from secondthoughts import runs
from secondthoughts.atomic import open_atomic


def line_plot(
    path: str | os.PathLike[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One line (with markers when it has few points) per ``label -> (xs, ys)``; empty series are
    left out of the legend. Written to a temporary file and renamed into place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        for label, (xs, ys) in series.items():
            if len(xs):
                ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if any(len(xs) for xs, _ in series.values()):
            ax.legend()
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)
    return path


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (:func:`atomic.open_atomic`)."""
    with open_atomic(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a torn last line, left by a kill, is left out)."""
    return runs.read_metrics(path).rows


def loss_curve(run: str | os.PathLike[str]) -> Path:
    """``loss.png`` of a ``secondthoughts train`` run: training loss per logged step and
    held-out loss per evaluation, against optimizer steps."""
    run = Path(run)
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    return line_plot(
        run / "loss.png",
        {
            "train loss": ([r["step"] for r in train], [r["loss"] for r in train]),
            "held-out loss": ([r["step"] for r in evals], [r["eval_loss"] for r in evals]),
        },
        xlabel="optimizer step",
        ylabel="loss per completion token",
        title=f"{run.name}: loss",
    )


def reward_curve(out: Path) -> Path | None:
    """``reward.png``: reward, KL-penalized reward and validity (left), KL (right) per step."""
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "reward" in r and "eval_reward" not in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in steps]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    try:
        a.plot(x, [r["reward"] for r in steps], label="reward (score + validity)")
        a.plot(x, [r["objective"] for r in steps], label="reward - beta KL")
        a.plot(x, [r["valid"] for r in steps], label="valid share", alpha=0.6)
        evals = [r for r in rows if "eval_reward" in r]
        if evals:
            a.plot([r["step"] for r in evals], [r["eval_reward"] for r in evals], "o--", label="held-out reward (greedy)")
        a.set_xlabel("step")
        a.legend(fontsize=7)
        a.set_title(out.name)
        b.plot(x, [r["kl"] for r in steps], color="tab:red")
        b.set_xlabel("step")
        b.set_ylabel("KL to the AEM model (per chain)")
        fig.tight_layout()
        save_png(fig, out / "reward.png")
    finally:
        plt.close(fig)
    return out / "reward.png"
