"""benchmarks/paired_reports.py on two report folders written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "paired_reports.py"


def _report(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir()
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_paired_differences_over_shared_stories(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [{"id": f"s{i}", "reward_output": 0.5 + 0.1 * (i % 2), "identical": False} for i in range(6)])
    b = _report(tmp_path / "b", [{"id": f"s{i}", "reward_output": 0.5, "identical": i == 1} for i in range(1, 8)])
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--fields", "reward_output", "identical", "reward2_output"],
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].startswith("5 stories in both")  # s1-s5
    assert lines[1].startswith("reward_output    +0.060 [") and lines[1].endswith("(n = 5)")  # 3 of 5 odd: 0.3 / 5
    assert lines[2].startswith("identical        -0.200 [")  # s1 copied its source in the second report only
    assert lines[3] == "reward2_output   no values"
    bad = subprocess.run([sys.executable, str(SCRIPT), str(a), str(tmp_path)], check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no outputs.jsonl" in bad.stderr
