"""Bench cells written by hand (no model runs), for the tests of ``collect`` and its reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secondthoughts import bench as B


def write_cells(root: Path, level: dict[str, float], reward: Callable[[float, int], float]) -> tuple[Any, list[Any], dict[str, str]]:
    """A two-dataset grid with transfer, each cell finished in ``root``: a method's outputs score
    ``reward(level, i)`` on example i (the second scorer ``level + 0.02 i``). (config, cells, fingerprints)."""
    cfg = B.config_from_dict({
        "datasets": {"a": {"format": "jsonl", "path": "a.jsonl", "train": 4, "test": 4}, "b": {"format": "jsonl", "path": "b.jsonl", "train": 4, "test": 4}},
        "reward": {"backbone": "x"}, "transfer": {"source": "a", "target": "b", "ks": [0, 2]},
    })  # fmt: skip
    cells = B.plan(cfg)
    fp = B.fingerprints(cfg, cells)
    for c in cells:
        folder = root / c.key
        (folder / "eval").mkdir(parents=True)
        base = level.get(c.method or f"from_{c.start}", 0.0)
        rows = [{"id": f"e{i}", "reward_output": reward(base, i), "reward2_output": base + 0.02 * i, "rouge_l": 10.0 * i} for i in range(8)]
        (folder / "eval" / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metric = {"mean": base, "ci95": [base - 0.05, base + 0.05]}
        metrics = {"seed": 0, "pairs": 2, "test": {"accuracy": 0.9, "pairwise_accuracy": 0.8}} if c.kind == "scorer" else {
            **{m: metric for m in B.METRICS}, "reference": {"source": {"alignment": metric, "alignment_second": metric},
                                                          "target": {"alignment": metric, "alignment_second": metric}}}  # fmt: skip
        (folder / B.CELL_FILE).write_text(json.dumps({"key": c.key, "fingerprint": fp[c.key], "seed": c.seed, "wall_s": 1.0, "finished": "now", "metrics": metrics}))
    return cfg, cells, fp
