"""Behaviour record for refactors (issue 18, item 8): outputs of fixed inputs through the public
decoding and reporting paths, compared with ``tests/fixtures/unchanged.json``, recorded before the
decoding path, bench and evaluate were restructured.

- the shipped model (``secondthoughts/examples/default-run``), greedy: one text at a time (chain
  drafting), a left-padded batch, generate mode, a forced prefix, a budget that cuts the chain,
  a context long enough to be cut, and the prompts and token budgets themselves;
- ``Refiner.rollout`` on the same model (its fresh LoRA starts at zero, so it is the shipped
  model): greedy chains and seeded samples;
- ``evaluate`` of those texts with a hand-written scorer, and its markdown report;
- ``bench.collect`` and ``bench.render_markdown`` of hand-made cells.

The inputs are written here (not rows of the shared data). The fast lane (the batch, prefix and
cut paths, prompts, budgets and both reports) takes about 20 s of one core, a third of it loading
the shipped model; one-text-at-a-time (drafted), generate mode, sampling and the refine part run in
the slow lane. Regenerate the record only for a
change that is meant to change behaviour, and say why in the commit:
``python tests/test_unchanged.py --write``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

RECORD = Path(__file__).parent / "fixtures" / "unchanged.json"

LONG_CONTEXT = " ".join(
    f"Rule {i}: people should be honest with their neighbours and return what they borrow on time." for i in range(30)
)
INPUTS = [
    ("It is wrong to hit people. Tom is angry at his brother.", "Tom hits his brother with a stick."),
    ("You should not lie to your friends. Ana broke her friend's vase.", "Ana tells her friend that the cat broke the vase."),
    ("It's rude to ignore someone who asks for help.", "Sam walks past the old man and ignores him."),
    ("Stealing is wrong. Leo wants a new bike.", "Leo takes the bike from the shop without paying."),
    (LONG_CONTEXT, "Mia keeps the ladder she borrowed and hides it in her garage."),
]
TARGETS = [
    "Tom talks to his brother calmly.",
    "Ana tells her friend that she broke the vase.",
    "Sam stops and helps the old man.",
    "Leo saves money and buys the bike from the shop.",
    "Mia gives the ladder she borrowed back to her neighbour.",
]


def kind_reward(contexts: list[str], texts: list[str]) -> list[float]:
    """A fixed scorer: 0.9 for texts with a kind word, 0.1 otherwise."""
    return [0.9 if re.search(r"talk|help|return|back|pay|buy|sorry|apolog|honest", t) else 0.1 for t in texts]


def _result(r: Any) -> dict[str, Any]:
    return {
        "compact": r.compact, "text": r.text, "valid": r.valid, "error": r.error, "truncated": r.truncated,
        "generated_target": r.generated_target, "disagrees": r.disagrees, "prefix_edits": r.prefix_edits,
        "new_tokens": int(r.timings.get("new_tokens", -1)),
    }  # fmt: skip


SLOW_KEYS = ("one_by_one", "generate", "sampled")  # of the realign part: checked in the slow lane


def _slow_paths(r: Any) -> dict[str, Any]:
    """Greedy one text at a time (chain drafting, the default there), generate mode, sampling."""
    items = [{"context": c, "source": s} for c, s in INPUTS]
    return {
        "one_by_one": [_result(r.realign(c, s)) for c, s in INPUTS],
        "generate": _result(r.realign(*INPUTS[0], mode="generate", draft="none", max_new_tokens=60)),
        "sampled": [_result(x) for x in r.realign_many(items[:2], batch_size=2, do_sample=True, temperature=1.0, top_p=0.9, seed=3)],
    }


def _realign(run: Path, slow: bool = True) -> tuple[dict[str, Any], Any, list[Any]]:
    from secondthoughts.realign import Realigner, _job

    r = Realigner(run, device="cpu")
    items = [{"context": c, "source": s} for c, s in INPUTS]
    out: dict[str, Any] = {}
    out["prompts"] = [r._prompt(_job(x, i)) for i, x in enumerate(items)]
    out["budgets"] = {m: r._budget([_job(x, i) for i, x in enumerate(items)], m) for m in ("apply", "generate", "direct")}
    batch = r.realign_many(items, batch_size=len(items))
    out["batch"] = [_result(x) for x in batch]
    out["prefix"] = _result(r.realign(*INPUTS[0], prefix='replace "hits" with "talks to"'))
    out["cut"] = _result(r.realign(*INPUTS[1], max_new_tokens=12, draft="none"))
    if slow:
        out.update(_slow_paths(r))
    return out, r, batch


def _refine(run: Path, tmp: Path) -> dict[str, Any]:
    from secondthoughts.data import Example
    from secondthoughts.refine import RefineConfig, Refiner

    cfg = RefineConfig(policy=str(run), reward="unused", data="unused", out=str(tmp / "rl"), k=2, max_new_tokens=0, progress=False)
    ref = Refiner(cfg, kind_reward)
    examples = [Example(c, s, t, f"x{i}") for i, ((c, s), t) in enumerate(zip(INPUTS, TARGETS))]
    out: dict[str, Any] = {"prompts": [ref.prompt_ids(e) for e in examples], "budget": ref._budget(examples)}
    for name, batch in (("greedy", ref.rollout(examples, greedy=True)), ("sampled", ref.rollout(examples[:2], seed=5))):
        out[name] = {"completion_ids": batch.completion_ids, "texts": batch.texts, "valid": batch.valid, "errors": batch.errors}
    return out


def _evaluate(realigner: Any, results: list[Any]) -> dict[str, Any]:
    from secondthoughts import evaluate as E
    from secondthoughts.data import Example

    class Fixed:
        """The batch results above, as a realigner (evaluate's own decoding is recorded above)."""

        model = realigner.model

        def default_mode(self) -> str:
            return "apply"

        def realign_many(self, items: Any, batch_size: int = 8, **kw: Any) -> list[Any]:
            for k, r in enumerate(results):
                r.timings = {"prompt_s": 0.0, "generate_s": 0.5, "total_s": 0.5 + k / 10, "batch_size": 5, "new_tokens": r.timings.get("new_tokens", 0)}
            return results

    examples = [Example(c, s, t, f"x{i}") for i, ((c, s), t) in enumerate(zip(INPUTS, TARGETS))]
    ev = E.evaluate(Fixed(), examples, reward=kind_reward, coherence=kind_reward, resamples=100, seed=1, batch_size=5)
    ev.metrics["speed"]["wall_s"] = 1.0  # measured
    for k in ("examples_per_s", "new_tokens_per_s"):
        ev.metrics["speed"][k] = 1.0
    return {"metrics": json.loads(json.dumps(ev.metrics, default=str)), "rows": json.loads(json.dumps(ev.rows, default=str)), "markdown": E.render_markdown(ev)}


def _bench(tmp: Path) -> dict[str, Any]:
    from hand_made_cells import write_cells

    from secondthoughts import bench as B

    level = {"direct": 0.2, "dpo": 0.3, "aem": 0.6, "aem_rl": 0.62, "from_aem": 0.1, "from_base": 0.5}
    cfg, cells, fp = write_cells(tmp, level, lambda base, i: base + 0.01 * i * (i % 3))
    results = B.collect(cfg, tmp, cells, fp)
    results["generated"] = "2000-01-01 00:00:00"  # the clock
    results["hardware"] = {"platform": "test", "cpu_count": 2, "torch": "x", "threads": 1}  # this machine
    return {"plan": [c.key for c in cells], "fingerprints": fp, "results": json.loads(json.dumps(results, default=str)), "markdown": B.render_markdown(results)}


def record(tmp: Path) -> dict[str, Any]:
    from secondthoughts.realign import default_run

    run = default_run()
    assert run is not None, "the shipped run is missing"
    t0 = time.perf_counter()
    realigned, realigner, batch = _realign(run)
    t1 = time.perf_counter()
    refined = _refine(run, tmp)
    t2 = time.perf_counter()
    out = {"realign": realigned, "refine": refined, "evaluate": _evaluate(realigner, batch), "bench": _bench(tmp / "bench")}
    print(f"record: realign {t1 - t0:.1f} s, refine {t2 - t1:.1f} s, reports {time.perf_counter() - t2:.1f} s", file=sys.stderr)
    return out


@pytest.fixture(scope="module")
def shipped() -> tuple[dict[str, Any], Any, list[Any]]:
    from secondthoughts.realign import default_run

    run = default_run()
    assert run is not None, "the shipped run is missing"
    return _realign(run, slow=False)


def _part(part: str, request: pytest.FixtureRequest, tmp: Path) -> dict[str, Any]:
    if part == "bench":
        return _bench(tmp / "bench")
    if part == "refine":
        from secondthoughts.realign import default_run

        return _refine(default_run(), tmp)  # type: ignore[arg-type]
    realigned, realigner, batch = request.getfixturevalue("shipped")
    if part == "realign_slow":
        return _slow_paths(realigner)
    return realigned if part == "realign" else _evaluate(realigner, batch)


@pytest.fixture(scope="module")
def then() -> dict[str, Any]:
    return json.loads(RECORD.read_text(encoding="utf-8"))


# The slow lane: refine loads a second copy of the model into a Refiner (accelerate, a fresh LoRA);
# realign_slow decodes one text at a time, in generate mode and by sampling.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("part", ["realign", pytest.param("realign_slow", marks=SLOW), pytest.param("refine", marks=SLOW), "evaluate", "bench"])
def test_outputs_are_the_recorded_ones(then: dict[str, Any], part: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    now = json.loads(json.dumps(_part(part, request, tmp_path)))
    if part.startswith("realign"):
        expected = {k: v for k, v in then["realign"].items() if (k in SLOW_KEYS) == (part == "realign_slow")}
    else:
        expected = then[part]
    assert set(now) == set(expected)
    for key in expected:
        assert now[key] == expected[key], f"{part}.{key} changed"


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        RECORD.write_text(json.dumps(record(Path(d)), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RECORD}")
