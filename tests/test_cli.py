"""The command line: edits and demo end to end through ``main``; one-line errors for hostile input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondthoughts.cli import build_parser, error_line, main
from secondthoughts.commands.realign import read_items
from secondthoughts.data import DataError
from secondthoughts.dataset_readers import FORMATS
from secondthoughts.atomic import write_atomic
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


def test_demo_says_how_the_shipped_run_was_trained(tmp_path: Path) -> None:
    from secondthoughts.commands.demo import shipped_summary
    from secondthoughts.realign import default_run

    run = default_run()
    assert run is not None
    info = json.loads((run / "config.json").read_text())
    line = shipped_summary(run)
    assert f"on {info['data']['train_examples']:,} Moral Stories pairs" in line
    dpo = {**info, "dpo": {"pairs": 1250, "beta": 0.1}}  # ``learn --pairs`` keeps its start run's train section
    dpo.pop("data")
    (tmp_path / "config.json").write_text(json.dumps(dpo))
    line = shipped_summary(tmp_path)
    assert line.startswith("SmolLM2-135M with a LoRA adapter taught by DPO on 1,250 preference pairs (beta 0.1) on top of a run")
    assert info["train"]["init_from"] in line and "merged at gap 3" in line
    info["data"] = {"train_examples": 3000}
    (tmp_path / "config.json").write_text(json.dumps(info))
    assert f"continued from `{info['train']['init_from']}` on 3,000 Moral Stories pairs" in shipped_summary(tmp_path)
    info["train"].pop("init_from", None)  # a run trained from the base model says so
    info.pop("data")  # and one whose config lacks the counts does not fail on them
    (tmp_path / "config.json").write_text(json.dumps(info))
    assert shipped_summary(tmp_path).startswith("SmolLM2-135M with a LoRA adapter trained by `secondthoughts train` on its Moral Stories pairs")


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


# ---------------------------------------------------------------- one line per error, no traceback

PY = [sys.executable, "-c", "import sys; from secondthoughts.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"]


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad example files -> (path, what the one-line error says after the path)."""
    good = '{"context": "c", "source": "a b", "target": "a c"}\n'
    files = {
        "truncated": (good + '{"source": "a", "tar').encode(),
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "empty": b"",
        "surrogate": (good + '{"source": "\\ud800", "target": "b"}\n').encode(),
        "nested": ("[" * 50_000).encode(),
    }
    for name, content in files.items():
        (tmp_path / f"{name}.jsonl").write_bytes(content)
    return {
        "truncated": (tmp_path / "truncated.jsonl", ":2: invalid JSON at column 17 (Unterminated string)"),
        "binary": (tmp_path / "binary.jsonl", ":1: not UTF-8 text (byte 0x89 at character 1)"),
        "empty": (tmp_path / "empty.jsonl", ": no examples (the file is empty)"),
        "surrogate": (tmp_path / "surrogate.jsonl", ":2: field 'source': contains a lone surrogate (U+D800): not valid Unicode text"),
        "nested": (tmp_path / "nested.jsonl", ":1: invalid JSON (nested too deeply)"),
        "missing": (tmp_path / "missing.jsonl", ": no such file"),
        "directory": (tmp_path, ": is a directory, not a file"),
    }


def test_train_checks_its_data_before_importing_torch(tmp_path: Path) -> None:
    """``train --data BAD`` fails with ``file:line: field: reason`` before torch (let alone a model) loads."""
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"source": "a", "target": "b"}\n')
    for name, (path, said) in _bad_inputs(tmp_path).items():
        for flags in (["--data", str(path)], ["--data", str(ok), f"--eval-data={path}"]):
            proc = subprocess.run([*PY, "train", *flags, "--out", str(tmp_path / "run")], capture_output=True, text=True)
            assert proc.returncode == 1, (name, proc.stderr)
            assert proc.stderr == f"error: {path}{said}\n", name
            assert proc.stdout.strip() == "False", name  # torch never imported
    assert not (tmp_path / "run").exists()


def test_refine_and_evaluate_check_their_data_first(tmp_path: Path) -> None:
    path, said = _bad_inputs(tmp_path)["surrogate"]
    for argv in (["refine", "--policy", "nope", "--data", str(path)], ["evaluate", "--model", "nope", "--data", str(path), "--out", str(tmp_path / "r")]):
        proc = subprocess.run([*PY, *argv], capture_output=True, text=True)
        assert (proc.returncode, proc.stderr, proc.stdout.strip()) == (1, f"error: {path}{said}\n", "False")


@pytest.mark.parametrize("kind", ["surrogate", "nested", "binary", "truncated", "directory", "missing"])
def test_prepare_reports_hostile_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path, said = _bad_inputs(tmp_path)[kind]
    assert main(["prepare", "--format", "jsonl", "--input", str(path), "--output", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}{said}") and err.count("\n") == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_prepare_skips_a_surrogate_row_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _bad_inputs(tmp_path)["surrogate"]
    assert main(["prepare", "--format", "jsonl", "--input", str(path), "--output", str(tmp_path / "o.jsonl"), "--skip-invalid"]) == 0
    assert "1  field 'source': contains a lone surrogate" in capsys.readouterr().out
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1


def test_realign_checks_its_input_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the model does not exist: an error about the rows proves they were read first
    for kind in ("surrogate", "directory", "binary"):
        path, said = _bad_inputs(tmp_path)[kind]
        assert main(["realign", "--model", str(tmp_path / "no-model"), "--input", str(path), "--output", str(tmp_path / "o.jsonl")]) == 1
        assert capsys.readouterr().err == f"error: {path}{said}\n"


@pytest.mark.parametrize("costs", ["inf,1,2", "1,nan,2", "0,1,2", "-1,1,2", "1,1,-inf", "1,1"])
def test_bad_costs_are_one_line(capsys: pytest.CaptureFixture[str], costs: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["edits", "a b", "a c", "--costs", costs])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"--costs must be three positive numbers insert,delete,replace, got '{costs}'" in err


def test_values_that_look_like_negative_numbers_are_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edits", "-1,5 x", "-2,5 x", "--json"]) == 0  # positionals, not flags
    assert json.loads(capsys.readouterr().out)["target"] == "-2,5 x"
    args = build_parser(["train"]).parse_args(["train", "--cost-sets", "1,1,2", "--merge-gap", "-1", "--lr", "-.5"])
    assert (args.merge_gap, args.lr) == (-1, -0.5)
    with pytest.raises(SystemExit):
        build_parser(["train"]).parse_args(["train", "--cost-sets", "-1,1,2"])
    assert "costs must be positive finite numbers, got '-1,1,2'" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _bad_inputs(tmp_path)["truncated"]
    argv = ["prepare", "--format", "jsonl", "--input", str(path), "--output", str(tmp_path / "o.jsonl")]
    assert main(argv) == 1
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(DataError, match="invalid JSON"):
            main(debug_argv)
    monkeypatch.setenv("SECONDTHOUGHTS_DEBUG", "1")
    with pytest.raises(DataError):
        main(argv)
    # a command that prints its own errors lets them through as well
    with pytest.raises(DataError, match="lone surrogate"):
        main(["realign", "--model", "nope", "--input", str(_bad_inputs(tmp_path)["surrogate"][0]), "--output", str(tmp_path / "o")])
    monkeypatch.delenv("SECONDTHOUGHTS_DEBUG")
    proc = subprocess.run([sys.executable, "-m", "secondthoughts", "prepare", *argv[1:]], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "secondthoughts", "prepare", *argv[1:], "--debug"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_error_lines() -> None:
    assert error_line(DataError("f.jsonl:3: field 'x': empty")) == "error: f.jsonl:3: field 'x': empty"
    assert error_line(FileNotFoundError(2, "No such file or directory", "a/b")) == "error: a/b: No such file or directory"
    assert error_line(OSError(28, "No space left on device")) == "error: [Errno 28] No space left on device"
    assert error_line(ValueError("first\n  second\n")) == "error: first; second"
    bug = error_line(TypeError("'NoneType' object is not subscriptable"))
    assert bug.startswith("error: TypeError: 'NoneType'") and "--debug" in bug


def test_output_that_is_a_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"context": "c", "source": "a b", "target": "a c"}\n')
    (tmp_path / "out").mkdir()
    assert main(["prepare", "--format", "jsonl", "--input", str(src), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: --output {tmp_path / 'out'}: is a directory; give the file to write\n"


def test_a_config_file_gets_the_checks_and_the_errors_the_flags_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"context": "c", "source": "a b", "target": "a c"}\n{"context": "c", "source": "d e", "target": "d f"}\n')
    (tmp_path / "out").mkdir()
    config = tmp_path / "prepare.yaml"
    config.write_text(f"format: jsonl\ninput: {src}\noutput: {tmp_path / 'out'}\n")
    assert main(["prepare", "--config", str(config)]) == 1  # before the dataset is read, as with the flag
    assert capsys.readouterr().err == f"error: --output {tmp_path / 'out'}: is a directory; give the file to write\n"
    config.write_text(f"format: jsonl\ninput: {src}\noutput: {tmp_path / 'ok.jsonl'}\nlimit: few\n")
    assert main(["prepare", "--config", str(config)]) == 1
    assert capsys.readouterr().err == f"error: {config}: limit: expected a whole number, got 'few'\n"
    config.write_text(f"format: jsonl\ninput: {src}\noutput: {tmp_path / 'ok.jsonl'}\nlimit: 5\n")
    assert main(["prepare", "--config", str(config), "--limit", "1"]) == 0  # the flag given wins
    assert (tmp_path / "ok.jsonl").read_text().count("\n") == 1
    with pytest.raises(SystemExit) as e:  # every missing required setting named, by the action's own parser
        main(["reward", "score"])
    assert e.value.code == 2
    assert "secondthoughts reward score: error: the following arguments are required: --model, --input, --output" in capsys.readouterr().err


# ---------------------------------------------------------------- fuzzing the command line


_FIELDS = ["source", "target", "context", "ID", "moral_action", "immoral_action", "toxic", "neutral1", "chosen", "rejected", "Q", "A", "worker_answer", "rot", "label", "scenario", "excuse", "meta", "x"]
_VALUES = st.none() | st.integers() | st.text(max_size=8) | st.sampled_from(["\ud800", "a\udfffb", "", "\n\nAssistant: hi", "0", "1"])
_RECORD_LINES = st.dictionaries(st.sampled_from(_FIELDS), _VALUES | st.lists(_VALUES, max_size=2), max_size=6).map(json.dumps)
PREPARE_INPUT = st.binary(max_size=200) | st.lists(_RECORD_LINES | st.text(max_size=30) | st.just("[" * 5000), max_size=5).map(
    lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=PREPARE_INPUT, fmt=st.sampled_from([f for f in FORMATS if f != "hub"]), suffix=st.sampled_from([".jsonl", ".csv", ".tsv"]), skip=st.booleans())
def test_fuzz_prepare_never_shows_a_traceback(tmp_path: Path, content: bytes, fmt: str, suffix: str, skip: bool) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["prepare", "--format", fmt, "--input", str(path), "--output", str(tmp_path / "o.jsonl"), *(["--skip-invalid"] * skip)])
    assert rc in (0, 1)
    lines = err.getvalue().splitlines()
    assert (rc == 0 and not lines) or (rc == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=st.binary(max_size=200) | st.lists(st.dictionaries(st.sampled_from(["source", "context", "prefix", "x"]), st.none() | st.integers() | st.text(max_size=8) | st.sampled_from(["\ud800", "<|del|><|old|> a", "<|eoc|>"]), max_size=4).map(json.dumps), max_size=4).map(lambda ls: "\n".join(ls).encode()))  # fmt: skip
def test_fuzz_realign_and_reward_input_rows(tmp_path: Path, content: bytes) -> None:
    from secondthoughts.commands.reward import read_rows

    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    for read in (lambda: read_items(str(path)), lambda: read_rows(str(path), "context", "source")[0]):
        try:
            rows = read()
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
        else:
            write_atomic(tmp_path / "out.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))  # and written back


def test_a_folder_as_output_or_a_missing_run_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"context": "c", "source": "a b", "target": "a c"}\n')
    for argv in (["realign", "--model", "nope", "--input", str(src)], ["reward", "score", "--model", "nope", "--input", str(src)]):
        assert main([*argv, "--output", str(tmp_path)]) == 1
        assert capsys.readouterr().err == f"error: --output {tmp_path}: is a directory; give the file to write\n"
    for command in ("train", "refine"):
        assert main([command, "--out", str(tmp_path / "none"), "--resume"]) == 1
        assert capsys.readouterr().err == f"error: {tmp_path / 'none'}: no run to resume (no config.json)\n"
