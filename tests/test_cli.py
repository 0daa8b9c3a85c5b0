"""The command line: edits and demo, end to end through ``main``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from secondthoughts.cli import main
from secondthoughts.diffview import chain_stats, inline_diff
from secondthoughts.edits import apply_text_edits, infer_text_edits, tokenize


def test_edits_json(capsys):
    assert main(["edits", "He hits the dog.", "He talks to the dog.", "--costs", "1,1.5,1.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "He talks to the dog."
    assert out["costs"] == {"insert": 1.0, "delete": 1.5, "replace": 1.2}
    assert out["cost"] == pytest.approx(2.2)
    assert out["readable"] == ['replace "hits" with "talks"', 'insert "to" after "hits"']
    assert [e["op"] for e in out["edits"]] == ["replace", "insert"]
    assert out["compact"] == "<|rep|><|old|> hits<|new|> talks<|ins|><|new|> to<|eoc|>"
    assert main(["edits", "He hits the dog.", "He talks to the dog.", "--json", "--chain-format", "inline"]) == 0
    assert json.loads(capsys.readouterr().out)["compact"] == "<|keep|>He<|rep|><|old|> hits<|new|> talks<|ins|><|new|> to<|eoc|>"


def test_edits_terminal_view(capsys):
    assert main(["edits", "He hits the dog angrily.", "He talks to the dog."]) == 0
    out = capsys.readouterr().out
    assert 'replace "hits" with "talks"' in out and 'delete "angrily"' in out
    assert "3 edits (1 replace, 1 delete, 1 insert), cost 4 under costs 1,1,2" in out


def test_bad_costs_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["edits", "a", "b", "--costs", "1,0,2"])
    assert "--costs must be three positive numbers" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_demo_shows_every_chain(capsys):
    assert main(["demo", "--no-model", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("demo-0") == 3 and "every chain applied back to its target exactly" in " ".join(out.split())


def test_console_script_starts_without_torch():
    code = "import sys; from secondthoughts.cli import main; main(['edits', 'a b', 'a c', '--json']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def test_inline_diff_marks_removed_and_written_spans():
    src, tgt = "He hits the dog.", "He pets the cat."
    chain = infer_text_edits(src, tgt)
    text = inline_diff(tokenize(src), chain)
    assert text.plain == "He hits pets the dog cat."
    styles = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    assert "red" in styles[" hits"] and "green" in styles[" pets"]
    assert chain_stats(chain) == {"insert": 0, "delete": 0, "replace": 2, "tokens_removed": 2, "tokens_written": 2}
    assert apply_text_edits(src, chain) == tgt
