"""The plain-rewrite baseline trained by TRL's ``SFTTrainer``, saved as a run folder that
``realign``, ``evaluate`` and ``serve`` read (``--mode direct``).

Same base model, prompt and LoRA as ours (``context <|src|> source <|sep|>`` -> ``target <eos>``,
loss on the completion only); one process, fp32, no packing, as TRL is commonly used:

    python scripts/trl_direct.py --data train.jsonl --out runs/trl-direct --epochs 1 --batch-size 8 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="normalized examples JSONL")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="embedded")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps; a rerun resumes from the last")
    args = p.parse_args(argv)

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from secondthoughts import atomic, models
    from secondthoughts.data import read_examples
    from secondthoughts.models import SEP, SRC

    out = Path(args.out)
    if (out / "config.json").exists():
        raise SystemExit(f"error: {out} already holds a run")
    model, tok = models.load(args.model, dtype=torch.float32, device="cpu")
    models.add_edit_tokens(model, tok)
    torch.manual_seed(args.seed)
    # No trainable token rows: TRL 1.16's fused loss fails on PEFT's trainable-tokens wrapper of a
    # tied head; the new rows keep their deterministic start, which loading rebuilds.
    model = models.apply_lora(model, (), r=args.lora_r, alpha=args.lora_alpha, dropout=0.05)
    examples = list(read_examples(args.data))
    rows = [{"prompt": f"{ex.context}{SRC}{ex.source}{SEP}", "completion": ex.target} for ex in examples]
    cfg = SFTConfig(
        output_dir=str(out / ".trl"), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.03,
        completion_only_loss=True, packing=False, bf16=False, gradient_checkpointing=False, logging_steps=10,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok)
    t0 = time.perf_counter()
    # A killed run resumes from its last checkpoint under out/.trl (Trainer restores optimizer,
    # scheduler, RNG and data order).
    trainer.train(resume_from_checkpoint=any((out / ".trl").glob("checkpoint-*")))
    elapsed = time.perf_counter() - t0

    def write(tmp: Path) -> None:
        for c in trainer.model.peft_config.values():
            c.base_model_name_or_path = args.model
        trainer.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        (tmp / "README.md").unlink(missing_ok=True)
        tok.save_pretrained(tmp)

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_dir(out / "model", write)
    import peft
    import transformers
    import trl

    info = {
        "train": {"data": args.data, "model": args.model, "mode": "direct", "max_length": args.max_length, "epochs": args.epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "trainer": "trl.SFTTrainer"},
        "data": {"train_examples": len(examples)},
        "env": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "trl": trl.__version__},
    }  # fmt: skip
    atomic.write_atomic(out / "config.json", json.dumps(info, indent=2))
    atomic.write_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in trainer.state.log_history))
    print(f"{out}: {trainer.state.global_step} steps in {elapsed:.0f} s; model in {out / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
