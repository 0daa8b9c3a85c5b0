"""scripts/ship_run.py on a run folder written here: the adapter is stored in float16, every shipped file is
readable by every user whatever mode the run wrote it with, the card says where the run now lives, and a run
that is not a LoRA run, has no card or names a missing card file stops with a one-line error, and a failure while
building leaves nothing half-shipped behind."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))

from ship_run import ship


def lora_run(root: Path, card: bool = True) -> Path:
    run = root / "myrun"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"out": str(run), "init_from": f"{run}2"}}), encoding="utf-8")
    (run / "model" / "adapter_config.json").write_text('{"r": 2}', encoding="utf-8")
    weights = run / "model" / "adapter_model.safetensors"
    save_file({"a.lora_A.weight": torch.full((2, 3), 1 / 3), "step": torch.tensor([7])}, weights)
    weights.chmod(0o600)  # as a trainer's private write leaves it
    (run / "model").chmod(0o700)
    if card:
        (run / "README.md").write_text(f'model = load("{run}")\n', encoding="utf-8")
    return run


def test_ship_casts_to_half_opens_modes_and_rewrites_the_card(tmp_path: Path) -> None:
    run = lora_run(tmp_path)
    extra = tmp_path / "extra.md"
    extra.write_text("## Shipped\nread blind\n", encoding="utf-8")
    (tmp_path / "default-run").mkdir()
    (tmp_path / "default-run" / "old.txt").write_text("the previous default", encoding="utf-8")
    dest = ship(run, tmp_path / "default-run", extra)
    assert not (dest / "old.txt").exists()
    state = load_file(dest / "model" / "adapter_model.safetensors")
    assert state["a.lora_A.weight"].dtype == torch.float16 and state["step"].dtype == torch.int64
    assert torch.allclose(state["a.lora_A.weight"].float(), torch.full((2, 3), 1 / 3), atol=1e-3)
    for path in dest.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    card = (dest / "README.md").read_text(encoding="utf-8")
    assert 'load("secondthoughts/examples/default-run")' in card and card.endswith("read blind\n")
    train = json.loads((dest / "config.json").read_text(encoding="utf-8"))["train"]
    assert train == {"out": "secondthoughts/examples/default-run", "init_from": f"{run}2"}  # another folder's path kept
    assert stat.S_IMODE((run / "model" / "adapter_model.safetensors").stat().st_mode) == 0o600  # the run is untouched


def test_ship_refuses_bad_input_and_leaves_nothing_half_shipped(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no model card"):
        ship(lora_run(tmp_path, card=False), tmp_path / "default-run")
    with pytest.raises(SystemExit, match="missing.md: no such file"):
        ship(tmp_path / "myrun", tmp_path / "default-run", tmp_path / "missing.md")
    (tmp_path / "myrun" / "model" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SafetensorError):  # a corrupt adapter fails while building: the half-built folder is removed
        ship(tmp_path / "myrun", tmp_path / "default-run", tmp_path / "myrun" / "config.json")
    (tmp_path / "full").mkdir()
    with pytest.raises(SystemExit, match="not a LoRA run folder"):
        ship(tmp_path / "full", tmp_path / "default-run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "myrun"]  # nothing half-shipped left behind
