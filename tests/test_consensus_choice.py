"""benchmarks/consensus_choice.py with the embedded MiniLM on candidates written here: a consensus
term moves the pick from an outlier to the texts that agree."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "consensus_choice.py"


def _write(tmp_path: Path) -> tuple[Path, Path]:
    texts = ["Sam returns the ladder to his neighbor.", "Sam gives the ladder back to his neighbor.",
             "Sam brings the borrowed ladder back to his neighbor.", "The weather turns purple on Tuesdays."]  # fmt: skip
    alts = [{"text": t, "valid": True, "score": -1.0} for t in texts]
    alts[3]["score"] = 5.0  # the default's score keeps the outlier
    row = {"id": "s0", "context": "It is right to return what you borrow.", "source": "Sam keeps the ladder he borrowed.", "alternatives": alts}
    labels = [{"id": "s0", "system": f"alt{j}", "split": "t", "align": [r, r], "coherence": [r, r],
               "text_sha1": hashlib.sha1(t.encode()).hexdigest()} for j, (t, r) in enumerate(zip(texts, [7, 7, 7, 1]))]  # fmt: skip
    cands, labs = tmp_path / "cands.jsonl", tmp_path / "labels.jsonl"
    cands.write_text(json.dumps(row) + "\n")
    labs.write_text("".join(json.dumps(r) + "\n" for r in labels))
    return cands, labs


@pytest.mark.slow  # the embedded MiniLM
def test_consensus_moves_the_pick_to_the_texts_that_agree(tmp_path: Path) -> None:
    cands, labs = _write(tmp_path)
    cmd = [sys.executable, str(SCRIPT), "--candidates", str(cands), "--labels", str(labs), "--split", "t", "--weights", "1e6"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1 stories; the default: Align 1.00  Coherence 1.00")  # the outlier
    assert lines[1].startswith("+ 1e+06 x consensus  Align 7.00") and "sum +12.00" in lines[2]


def test_bad_input_stops_before_the_encoder_loads(tmp_path: Path) -> None:
    cands, labs = _write(tmp_path)
    base = [sys.executable, str(SCRIPT), "--labels", str(labs)]
    runs = {
        "give one --split per --candidates file": ["--candidates", str(cands), "--split", "t", "u"],
        "story s0 appears in two files": ["--candidates", str(cands), str(cands), "--split", "t", "t"],
        "no story with rated candidates (are u the labels' splits": ["--candidates", str(cands), "--split", "u"],
    }
    for message, args in runs.items():
        out = subprocess.run([*base, *args], check=False, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and message in out.stderr, out.stderr
