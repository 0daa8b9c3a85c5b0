"""Copy a ``secondthoughts train`` LoRA run into the package as the demo's model
(``secondthoughts/examples/demo-run``), with the adapter weights stored as float16 (half the size;
they are cast back to the model's dtype on load).

    python scripts/ship_demo_run.py runs/ms1000-anchored

Kept: ``config.json``, ``metrics.jsonl``, ``README.md`` (the model card), ``loss.png`` and
``model/`` (adapter + tokenizer). Left out: ``checkpoint/`` (optimizer state). The shipped run is
rebuilt by the commands in ``benchmarks/ms1000.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEST = Path(__file__).resolve().parents[1] / "secondthoughts" / "examples" / "demo-run"
KEEP = ("config.json", "README.md", "loss.png", "metrics.jsonl")


def ship(run: Path, dest: Path = DEST) -> Path:
    if not (run / "model" / "adapter_config.json").is_file():
        raise SystemExit(f"{run}: not a LoRA run folder (no model/adapter_config.json)")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".demo-run."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the package is read by every user
    for name in KEEP:
        shutil.copy2(run / name, tmp / name)
    card = tmp / "README.md"  # its "Use" snippet names the run folder it was written in
    card.write_text(card.read_text(encoding="utf-8").replace(str(run), "secondthoughts/examples/demo-run"), encoding="utf-8")
    shutil.copytree(run / "model", tmp / "model")
    weights = tmp / "model" / "adapter_model.safetensors"
    state = load_file(weights)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}, weights, metadata={"format": "pt"})
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"shipped {run} -> {dest} ({size / 2**20:.1f} MiB)")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ship(ap.parse_args().run)


if __name__ == "__main__":
    main()
