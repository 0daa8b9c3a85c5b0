"""benchmarks/labels_summary.py on labels written here: per-system means, the random candidate as
the mean of a story's distinct candidates, named systems and texts several wrote, paired
differences and the coherence ratio, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "labels_summary.py"


def _run(tmp_path: Path, labels: list[dict], *splits: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    cmd = [sys.executable, str(SCRIPT), "--labels", str(path), "--split", *splits, "--resamples", "200", *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def _rows(sid: str, split: str, ratings: dict[str, tuple[int, int]]) -> list[dict]:
    return [{"id": sid, "system": k, "split": split, "align": [a, a], "coherence": [c, c + 1]} for k, (a, c) in ratings.items()]


def test_per_system_means(tmp_path: Path) -> None:
    labels = _rows("s1", "r1", {"alt0": (4, 4), "alt1": (6, 6), "gold": (7, 7), "source": (1, 6)})
    labels += _rows("s2", "r1", {"alt0": (2, 2), "alt1": (4, 5), "alt2": (6, 2), "gold": (6, 6), "source": (2, 6)})
    labels += _rows("s3", "other", {"alt0": (7, 7)})  # another split: left out
    out = _run(tmp_path, labels, "r1")
    assert out.returncode == 0, out.stderr
    table = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert out.stdout.startswith("2 stories")
    assert table["alt0"][1] == "3.00" and table["alt0"][4] == "3.50"  # coherence: mean of the two raters
    # random: s1 (4+6)/2 = 5.00 align, s2 (2+4+6)/3 = 4.00; mean 4.50. Coherence >= 5: s1 1/2, s2 1/3.
    assert table["random"][1] == "4.50" and table["random"][7] == "0.42"
    assert table["gold"][1] == "6.50" and table["source"][1] == "1.50"


def test_a_split_with_no_rows_is_an_error(tmp_path: Path) -> None:
    out = _run(tmp_path, _rows("s1", "r1", {"alt0": (4, 4)}), "nope")
    assert out.returncode != 0 and "no rows in split(s) nope" in out.stderr


def test_named_systems_shared_texts_and_paired_ratio(tmp_path: Path) -> None:
    # s1: "a" and "b" wrote the same text (one row, "a+b"); s2: "a" alone (no "b": left out of the pair).
    labels = [{"id": "s1", "system": "a+b", "split": "r", "align": [4, 4], "coherence": [3, 3]},
              {"id": "s1", "system": "gold", "split": "r", "align": [6, 6], "coherence": [6, 6]},
              {"id": "s2", "system": "a", "split": "r", "align": [2, 2], "coherence": [6, 6]},
              {"id": "s2", "system": "gold", "split": "r", "align": [7, 7], "coherence": [4, 4]},
              {"id": "s3", "system": "b", "split": "r", "align": [5, 5], "coherence": [5, 5]}]  # fmt: skip
    out = _run(tmp_path, labels, "r", extra=("--systems", "a", "b", "gold", "--paired", "a:gold", "a:b"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    table = {line.split()[0]: line.split() for line in lines[2:5]}
    assert table["a"][1] == "3.00" and table["a"][4] == "4.50"  # s1 shares b's rating
    assert table["b"][1] == "4.50" and table["b"][4] == "4.00"
    at = lines.index("a - gold, 2 stories:")
    assert lines[at + 1].split()[1] == "-3.50"  # align: (4-6 + 2-7) / 2
    assert lines[at + 4].split()[2] == "0.900"  # coherence (3+6)/2 over (6+4)/2
    assert "a - b, 1 stories:" in lines


def test_a_bad_pair_is_an_error(tmp_path: Path) -> None:
    out = _run(tmp_path, _rows("s1", "r1", {"alt0": (4, 4)}), "r1", extra=("--paired", "alt0"))
    assert out.returncode != 0 and "--paired takes A:B" in out.stderr


def test_one_story_in_two_pooled_splits_is_an_error(tmp_path: Path) -> None:
    labels = _rows("s1", "r1", {"gold": (7, 7)}) + _rows("s1", "r2", {"gold": (6, 6)})
    out = _run(tmp_path, labels, "r1", "r2", extra=("--systems", "gold"))
    assert out.returncode != 0 and "story s1, system gold: rated in splits r1 and r2" in out.stderr


def test_an_unknown_system_is_an_error(tmp_path: Path) -> None:
    out = _run(tmp_path, _rows("s1", "r1", {"alt0": (4, 4), "gold": (7, 7)}), "r1", extra=("--paired", "alt0:golden"))
    assert out.returncode != 0 and "no system golden in split(s) r1" in out.stderr


def test_level_widens_the_intervals_and_a_bad_level_is_an_error(tmp_path: Path) -> None:
    labels = [r for i in range(12) for r in _rows(f"s{i}", "r", {"a": (1 + i % 7, 1 + i % 5), "gold": (7, 7)})]

    def bounds(*extra: str) -> list[tuple[float, float]]:
        out = _run(tmp_path, labels, "r", extra=("--systems", "a", "--paired", "a:gold", *extra))
        assert out.returncode == 0, out.stderr
        return [(float(lo), float(hi)) for lo, hi in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", out.stdout)]

    at95, at99 = bounds(), bounds("--level", "0.99")
    assert len(at95) == len(at99) == 7  # three cells of "a", three paired scales, the ratio
    assert all(lo99 <= lo95 and hi95 <= hi99 for (lo95, hi95), (lo99, hi99) in zip(at95, at99))
    assert any(lo99 < lo95 for (lo95, _), (lo99, _) in zip(at95, at99))
    out = _run(tmp_path, labels, "r", extra=("--level", "1.5"))
    assert out.returncode != 0 and "--level must be between 0 and 1, got 1.5" in out.stderr
