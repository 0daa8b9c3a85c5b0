"""Copy a ``secondthoughts train`` LoRA run into the package, with the adapter weights stored as
float16 (half the size; they are cast back to the model's dtype on load):
``secondthoughts/examples/default-run`` (what ``realign``, ``serve`` and ``demo`` use without
``--model``), with ``--as demo-run`` the earlier shipped model the coherence labels were made on,
or with ``--as rewrite-run`` the direct rewrite model whose likelihood reranks best-of-N
(``--rerank likelihood``; a run without a model card needs ``--card-extra``).

    python scripts/ship_run.py runs/ms-merged-3k [--card-extra dev-figures.md]

Kept: ``config.json``, ``metrics.jsonl``, ``README.md`` (the model card), ``loss.png`` and
``model/`` (adapter + tokenizer). Left out: ``checkpoint/`` (optimizer state). The shipped run is
rebuilt by the commands in ``benchmarks/ms1000.sh``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

EXAMPLES = Path(__file__).resolve().parents[1] / "secondthoughts" / "examples"
KEEP = ("config.json", "README.md", "loss.png", "metrics.jsonl")


def ship(run: Path, dest: Path, card_extra: Path | None = None) -> Path:
    weights_in = run / "model" / "adapter_model.safetensors"
    if not (run / "model" / "adapter_config.json").is_file() or not weights_in.is_file():
        raise SystemExit(f"{run}: not a LoRA run folder (no model/adapter_config.json and adapter_model.safetensors)")
    if not (run / "config.json").is_file():
        raise SystemExit(f"{run}: no config.json (not a run folder)")
    if card_extra is not None and not card_extra.is_file():
        raise SystemExit(f"{card_extra}: no such file (--card-extra)")
    if not (run / "README.md").exists() and card_extra is None:
        raise SystemExit(f"{run} has no model card (README.md): pass --card-extra")
    # The card's "Use" snippet and the config name the folder the run was written to (as given then, or resolved
    # now); quoted, so that a run folder whose path starts another's is not rewritten inside it.
    config_text = (run / "config.json").read_text(encoding="utf-8")
    out = json.loads(config_text).get("train", {}).get("out")
    olds = {f'"{p}"' for p in (str(run), str(run.resolve()), out) if p}
    here = f'"secondthoughts/examples/{dest.name}"'

    def relocate(text: str) -> str:
        for old in olds:
            text = text.replace(old, here)
        return text

    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        (tmp / "config.json").write_text(relocate(config_text), encoding="utf-8")
        for name in KEEP:
            if name not in ("config.json", "README.md") and (run / name).exists():
                shutil.copy2(run / name, tmp / name)
        card = run / "README.md"
        text = relocate(card.read_text(encoding="utf-8")) if card.exists() else ""
        if card_extra is not None:  # measured after training (decodings, dev figures): the card says them too
            text = (text.rstrip() + "\n\n" if text else "") + card_extra.read_text(encoding="utf-8").strip() + "\n"
        (tmp / "README.md").write_text(text, encoding="utf-8")
        shutil.copytree(run / "model", tmp / "model")
        weights = tmp / "model" / "adapter_model.safetensors"
        state = load_file(weights)
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}, weights, metadata={"format": "pt"})
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and a run's own modes may be private; every user reads these
            path.chmod(0o755 if path.is_dir() else 0o644)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-shipped stays in the package
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"shipped {run} -> {dest} ({size / 2**20:.1f} MiB)")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--as", dest="name", default="default-run", choices=("default-run", "demo-run", "rewrite-run"))
    ap.add_argument("--card-extra", type=Path, help="markdown appended to the model card")
    args = ap.parse_args()
    ship(args.run, EXAMPLES / args.name, args.card_extra)


if __name__ == "__main__":
    main()
