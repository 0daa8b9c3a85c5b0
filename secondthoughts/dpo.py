"""DPO baseline (TRL's ``DPOTrainer``): the value-aligned text is preferred over the unaligned one.

The policy starts from a ``secondthoughts train --mode direct`` run, the usual SFT-then-DPO
recipe: the direct run has already learned the prompt format (``context <|src|> source <|sep|>``,
whose marker tokens the base model has never seen), and the DPO reference is that SFT model.
Starting from the base model instead would leave DPO to learn the format from preferences alone.

As in refinement (``policy.load_policy``), the direct run's LoRA is merged into the base weights and a fresh LoRA is
trained on top; TRL keeps a frozen copy of the fresh adapter as the reference, i.e. the direct
model. The marker token rows stay as the direct run trained them: TRL 1.16's fused LM head reads
``lm_head.bias``, which PEFT's trainable-token wrapper of a tied output layer does not have, so
DPO trains the LoRA weights only. The result is written as a run folder that ``models.load`` and
``Realigner`` read like a direct run: ``model/`` (one LoRA adapter on the original base, the two
adapters concatenated, see ``policy.save_policy``, plus the direct run's marker rows),
``config.json`` (``train`` = the direct run's settings, mode ``direct``; ``dpo`` =
:class:`DPOSettings`), ``metrics.jsonl`` (TRL's log).

Examples are tokenized here exactly as the direct mode tokenizes them
(``sequences.encode_prompt`` / ``encode_completion``), not by TRL from strings, so the prompt the
policy is trained on is the one ``Realigner`` decodes from.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secondthoughts import settings
from secondthoughts.data import Example


@dataclass
class DPOSettings:
    """The DPO knobs the benchmark exposes (the rest are TRL's defaults)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature: strength of the implicit KL to the direct model"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate of the new LoRA adapter"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the preference pairs"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; overrides epochs when > 0"})
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch"})
    grad_accum: int = field(default=2, metadata={"help": "micro-batches per optimizer step"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + completion; longer rows keep their start"})
    lora_r: int = field(default=16, metadata={"help": "rank of the new LoRA adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "alpha of the new LoRA adapter"})
    loss_type: str = field(default="sigmoid", metadata={"help": "TRL loss_type (sigmoid: the DPO paper's loss)"})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DPOSettings:
        out = settings.from_dict(cls, d, "DPO settings")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r"):
            if getattr(out, name) < 1:
                raise ValueError(f"DPO {name} must be >= 1")
        return out


def preference_rows(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, list[int]]]:
    """TRL's tokenized preference format: the direct-mode prompt, the target (chosen) and the
    source (rejected), each completion ending in EOS. The context is cut from the left so that
    the prompt leaves room for the longer completion, as ``sequences.encode`` cuts it."""
    from secondthoughts.sequences import encode_completion, encode_prompt

    rows = []
    for ex in examples:
        chosen, rejected = encode_completion(tokenizer, None, ex.target, ex.source), encode_completion(tokenizer, None, ex.source, ex.source)
        bare = len(encode_prompt(tokenizer, "", ex.source))
        room = max(0, max_length - bare - max(len(chosen), len(rejected)))
        rows.append({"prompt_ids": encode_prompt(tokenizer, ex.context, ex.source, room), "chosen_ids": chosen, "rejected_ids": rejected})
    return rows


def _trainer_class() -> Any:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """TRL's trainer, fed rows already tokenized by secondthoughts (see the module docstring)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    return PretokenizedDPOTrainer


def train_dpo(direct_run: str | os.PathLike[str], examples: Sequence[Example], out: str | os.PathLike[str], settings: DPOSettings,
              *, seed: int = 0, progress: bool = True) -> Path:
    """Train DPO from ``direct_run`` on ``examples`` and write the run folder ``out`` (replaced
    if it holds an unfinished run: TRL's own checkpoints are not used, a partial run restarts)."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from secondthoughts import models
    from secondthoughts.policy import load_policy, save_policy
    from secondthoughts.realign import run_info
    from secondthoughts.runs import environment
    from secondthoughts.atomic import write_atomic, write_dir

    direct_run, out = Path(direct_run), Path(out)
    info = run_info(direct_run)
    if not info or info.get("mode") != "direct":
        raise ValueError(f"{direct_run}: DPO starts from a `secondthoughts train --mode direct` run")
    if not examples:
        raise ValueError("no preference pairs to train DPO on")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # load_policy merges the direct adapter and puts a fresh LoRA (+ marker rows) on top: exactly
    # what refinement does, so the saved adapter combines the two the same way.
    policy, _, tok, direct_lora = load_policy(str(direct_run), lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, seed=seed, train_tokens=False)
    data = Dataset.from_list(preference_rows(tok, examples, settings.max_length))
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(out / "trainer"), beta=settings.beta, learning_rate=settings.lr, num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, max_length=settings.max_length, loss_type=[settings.loss_type],
        seed=seed, data_seed=seed, logging_steps=5, save_strategy="no", report_to="none", use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), disable_tqdm=not progress, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = _trainer_class()(model=policy, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen copy of the fresh adapter
        model.delete_adapter("ref")
    how: list[str] = []

    def write(p: Path) -> None:
        how.append(save_policy(model, tok, p, direct_lora, str(direct_run)))
        carry_token_rows(direct_run / "model", p)

    write_dir(out / "model", write)
    log = [{"step": r.get("step", 0), **r} for r in trainer.state.log_history]
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    run_info_out = {
        "train": {**info, "out": str(out)},  # mode "direct": Realigner decodes it like the direct run
        "dpo": {**asdict(settings), "seed": seed, "start": str(direct_run), "pairs": len(examples), "saved_as": how[0]},
        "env": environment(trl=_trl_version()),
        "model": dict(zip(("trainable_parameters", "parameters"), models.count_parameters(model))),
    }
    write_atomic(out / "config.json", json.dumps(run_info_out, indent=2))
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return out


def carry_token_rows(source: Path, adapter: Path) -> None:
    """Copy the trainable marker rows (PEFT trainable tokens) of the adapter in ``source`` into
    the adapter in ``adapter``, which was trained without them on a model that had them merged."""
    from safetensors.torch import load_file, save_file

    src_cfg = json.loads((source / "adapter_config.json").read_text())
    if not src_cfg.get("trainable_token_indices"):
        return
    rows = {k: v for k, v in load_file(source / "adapter_model.safetensors").items() if "trainable_tokens_" in k}
    state = load_file(adapter / "adapter_model.safetensors")
    save_file({**state, **rows}, str(adapter / "adapter_model.safetensors"))
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["trainable_token_indices"] = src_cfg["trainable_token_indices"]
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def _trl_version() -> str:
    import trl

    return str(trl.__version__)
