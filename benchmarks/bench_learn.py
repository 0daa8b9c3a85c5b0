"""Learning from corrections, measured as PRELUDE does (Gao et al., 2024): a simulated user.

A user whose preferred rewrite of each story is known corrects the model's output on a stream of
examples; after every ``k`` corrections the model learns them (``secondthoughts learn``: on top of
the model in use, with replay). The cost the user pays on an example is the token edit distance
from the model's output to the preferred text under the project's own DP (``infer_text_edits`` +
``chain_cost``, replace = 2). Reported against the same model that never learns:

* cumulative user cost over the stream (and its per-example mean after the first round, paired,
  with a bootstrap interval), plotted as the learning curve;
* on held-out stories: cost to the preferred text, alignment (a reward run) and coherence (a
  coherence run), before and after, paired differences with intervals.

Three users. ``gold`` prefers the gold moral action, whatever the model wrote. ``gold-style``
prefers it with one consistent habit, the manner adverb "calmly" after the subject ("Hector
calmly creeps forward..."). ``style`` is PRELUDE's user: it keeps what the model wrote and only
applies the habit to it, so its cost is what the model has not yet learned of the preference.
Held-out stories show whether the habit is picked up as a preference rather than memorized.

    secondthoughts prepare --format moral_stories --input ../shared/data/moral_stories/moral_stories.jsonl --split train --output train.jsonl
    secondthoughts prepare --format moral_stories --input ../shared/data/moral_stories/moral_stories.jsonl --split dev --output dev.jsonl
    python benchmarks/bench_learn.py --stream dev.jsonl --held-out dev.jsonl --held-out-skip 800 --replay-data train.jsonl \\
        --reward runs/reward-ms --coherence runs/coherence-alone --out bench-learn
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secondthoughts.data import Example, read_examples, write_examples
from secondthoughts.edits import chain_cost, infer_text_edits
from secondthoughts.evaluate import bootstrap_ci, mean_ci
from secondthoughts.learn import LearnConfig, learn
from secondthoughts.realign import Realigner, default_run

STYLE_WORD = "calmly"


def styled(text: str) -> str:
    """The user's habit: the manner adverb after the first word (the subject)."""
    first, _, rest = text.partition(" ")
    return text if not rest or rest.startswith(STYLE_WORD) else f"{first} {STYLE_WORD} {rest}"


def has_style(text: str) -> bool:
    return text.split(" ")[1:2] == [STYLE_WORD]


# user -> (example, the model's output) -> the text the user wants instead
USERS: dict[str, Callable[[Example, str], str]] = {
    "gold": lambda ex, out: ex.target,
    "gold-style": lambda ex, out: styled(ex.target),
    "style": lambda ex, out: styled(out),
}


def cost(output: str, preferred: str) -> float:
    """Token edit distance under the project's DP: what the user still has to change."""
    return chain_cost(infer_text_edits(output, preferred))


def outputs(run: str, examples: Sequence[Example], batch_size: int) -> list[str]:
    return [r.text for r in Realigner(run).realign_many(examples, batch_size=batch_size)]


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Mean of b - a with a bootstrap interval over items."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    return {"mean": float(d.mean()), "ci95": bootstrap_ci(len(d), lambda i: float(d[i].mean()), seed=seed), "n": len(d)}


def run_user(name: str, args: argparse.Namespace, stream: list[Example], static_out: list[str], work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    prefer = USERS[name]
    model, rounds, learner_out = args.model, [], []
    for start in range(0, len(stream), args.k):
        batch = stream[start : start + args.k]
        outs = static_out[start : start + args.k] if model == args.model else outputs(model, batch, args.batch_size)
        learner_out += outs
        corrections = work / name / f"corrections-{start // args.k + 1}.jsonl"
        corrections.parent.mkdir(parents=True, exist_ok=True)
        # an output the user keeps as it is counts as a correction too (approved), unless it is the source
        rows = [Example(ex.context, ex.source, prefer(ex, o), ex.id) for ex, o in zip(batch, outs) if prefer(ex, o) != ex.source]
        out = work / name / f"round-{start // args.k + 1}"
        if not rows:
            log(f"{name}: round {start // args.k + 1}: nothing to learn")
            continue
        write_examples(corrections, rows)
        t0 = time.perf_counter()
        learn(LearnConfig(
            model=model, corrections=str(corrections), out=str(out), replay_data=args.replay_data, replay=args.replay,
            epochs=args.epochs, lr=args.lr, batch_size=4, seed=args.seed, progress=False,
        ))  # fmt: skip
        rounds.append({"after_examples": start + len(batch), "run": str(out), "learn_s": round(time.perf_counter() - t0, 1)})
        log(f"{name}: learned round {len(rounds)} ({rounds[-1]['learn_s']} s)")
        model = str(out)
    return {
        "rounds": rounds,
        "final_run": model,
        "learner_cost": [cost(o, prefer(ex, o)) for ex, o in zip(stream, learner_out)],
        "static_cost": [cost(o, prefer(ex, o)) for ex, o in zip(stream, static_out)],
        "learner_outputs": learner_out,
    }


def held_out_scores(texts: list[str], examples: Sequence[Example], prefer: Callable[[Example, str], str], scorers: dict[str, Any]) -> dict[str, list[float]]:
    ctx = [ex.context for ex in examples]
    scores = {"cost": [cost(t, prefer(ex, t)) for t, ex in zip(texts, examples)], "style": [float(has_style(t)) for t in texts]}
    for key, fn in scorers.items():
        scores[key] = [float(s) for s in fn(ctx, texts)]
    return scores


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        x = np.arange(1, len(r["learner_cost"]) + 1)
        ax.plot(x, np.cumsum(r["static_cost"]), label="never learns", color="#888")
        ax.plot(x, np.cumsum(r["learner_cost"]), label=f"learns every {r['k']} corrections", color="#1f77b4")
        for rd in r["rounds"][:-1]:
            ax.axvline(rd["after_examples"] + 0.5, color="#ddd", lw=0.8, zorder=0)
        ax.set_title(f"user: {name}")
        ax.set_xlabel("examples corrected")
        ax.set_ylabel("cumulative edit cost (tokens)")
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="run to start from (default: the shipped default-run)")
    p.add_argument("--stream", required=True, help="examples the simulated user corrects, in file order")
    p.add_argument("--n", type=int, default=40, help="stream length")
    p.add_argument("--k", type=int, default=10, help="corrections per learning round")
    p.add_argument("--held-out", required=True, help="held-out examples (not in the stream)")
    p.add_argument("--held-out-skip", type=int, default=0, help="skip this many rows of --held-out first")
    p.add_argument("--held-out-n", type=int, default=50)
    p.add_argument("--replay-data", required=True, help="training examples to replay (what the run was trained on)")
    p.add_argument("--replay", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--users", default="gold,gold-style,style", help=f"of {', '.join(USERS)}")
    p.add_argument("--reward", help="alignment reward run for the held-out scores")
    p.add_argument("--coherence", help="coherence run for the held-out scores")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-learn")
    args = p.parse_args(argv)
    args.model = args.model or str(default_run())
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {msg}", flush=True)

    stream = list(read_examples(args.stream))[: args.n]
    held = list(read_examples(args.held_out))[args.held_out_skip : args.held_out_skip + args.held_out_n]
    overlap = {(e.context, e.source) for e in stream} & {(e.context, e.source) for e in held}
    if overlap:
        sys.exit(f"error: {len(overlap)} held-out examples are also in the stream")
    scorers: dict[str, Any] = {}
    from secondthoughts import reward

    if args.reward:
        scorers["alignment"] = reward.load_scorer(args.reward)
    if args.coherence:
        scorers["coherence"] = reward.load_scorer(args.coherence)

    both = outputs(args.model, stream + held, args.batch_size)  # the starting model, loaded once
    static_out, held_before = both[: len(stream)], both[len(stream) :]
    log(f"static outputs: {len(stream)} stream, {len(held)} held-out")
    results: dict[str, Any] = {}
    for name in args.users.split(","):
        r = run_user(name, args, stream, static_out, work, log)
        held_after = outputs(r["final_run"], held, args.batch_size)
        before = held_out_scores(held_before, held, USERS[name], scorers)
        after = held_out_scores(held_after, held, USERS[name], scorers)
        later = slice(args.k, None)  # examples seen after the first learning round
        r.update(
            k=args.k,
            cumulative={"learner": float(sum(r["learner_cost"])), "static": float(sum(r["static_cost"]))},
            after_first_round=paired(r["static_cost"][later], r["learner_cost"][later]),
            held_out={key: {"before": mean_ci(before[key], 1000, 0), "after": mean_ci(after[key], 1000, 0), "difference": paired(before[key], after[key])} for key in before},
            held_out_outputs={"before": held_before, "after": held_after},
        )
        results[name] = r
        log(f"{name}: cumulative cost {r['cumulative']['learner']:.0f} (learns) vs {r['cumulative']['static']:.0f} (never learns)")

    (work / "results.json").write_text(json.dumps({"args": vars(args), "users": results}, indent=2), encoding="utf-8")
    plot(results, work / "learn_curve.png")
    fmt = lambda m: f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" if m.get("ci95") else f"{m.get('mean', float('nan')):.3f}"
    print(f"\n{len(stream)} stream examples, learning every {args.k}; {len(held)} held-out; {time.perf_counter() - started:.0f} s\n")
    print("| user | cumulative cost, never learns | learns | per-example change after round 1 |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['cumulative']['static']:.0f} | {r['cumulative']['learner']:.0f} | {fmt(r['after_first_round'])} |")
    print("\n| user | held-out | before | after | difference |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        for key, v in r["held_out"].items():
            print(f"| {name} | {key} | {fmt(v['before'])} | {fmt(v['after'])} | {fmt(v['difference'])} |")
    print(f"\nwrote {work / 'results.json'} and {work / 'learn_curve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
