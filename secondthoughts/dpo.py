"""DPO (TRL's ``DPOTrainer``) from a trained run: a baseline and learning from rated pairs.

Two uses. (1) The direct baseline of ``bench``: the policy starts from a ``secondthoughts train
--mode direct`` run, the usual SFT-then-DPO recipe, and the value-aligned text is preferred over
the unaligned one (:func:`target_over_source`). (2) A chain-of-edits run (``--mode coe``, e.g. the
shipped default) taught by readers' preferences between two texts for the same source
(:class:`Preference`): each completion is the chain the DP infers from the source to that text,
exactly as ``train`` and ``learn`` infer it for the run (its first cost set, its merge gap, its
chain format), then the text and EOS, so that the pairs teach the writing the run decodes.

As in refinement (``policy.load_policy``), the run's LoRA is merged into the base weights and a fresh LoRA is
trained on top; TRL keeps a frozen copy of the fresh adapter as the reference, i.e. the run itself.
The marker token rows stay as the run trained them: TRL 1.16's fused LM head reads
``lm_head.bias``, which PEFT's trainable-token wrapper of a tied output layer does not have, so
DPO trains the LoRA weights only. The result is written as a run folder that ``models.load`` and
``Realigner`` read like the run it started from: ``model/`` (one LoRA adapter on the original base,
the two adapters concatenated, see ``policy.save_policy``, plus the run's marker rows),
``config.json`` (``train`` = the run's settings; ``dpo`` = :class:`DPOSettings`), ``metrics.jsonl``
(TRL's log).

Examples are tokenized here exactly as training tokenizes them (``sequences.encode_prompt`` /
``encode_completion``), not by TRL from strings, so the prompt the policy is trained on is the one
``Realigner`` decodes from.
"""

from __future__ import annotations

import json
import math
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
    """The DPO knobs the benchmark and ``learn --pairs`` expose (the rest are TRL's defaults)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature: strength of the implicit KL to the starting run"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate of the new LoRA adapter"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the preference pairs"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; overrides epochs when > 0"})
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch"})
    grad_accum: int = field(default=2, metadata={"help": "micro-batches per optimizer step"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + completion: the context is cut from the left to fit; a pair whose source and completions alone are longer is left out"})
    lora_r: int = field(default=16, metadata={"help": "rank of the new LoRA adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "alpha of the new LoRA adapter"})
    loss_type: str = field(default="sigmoid", metadata={"help": "TRL loss_type (sigmoid: the DPO paper's loss)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass for less memory (TRL's default; off here: a 3-step trial on the 135M model, 2 CPU threads, measured 22 s a step either way)"})
    sft_weight: float = field(default=0.0, metadata={"help": "weight of TRL's `sft` loss on the chosen completion added to it (RPO); 0: none"})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DPOSettings:
        out = settings.from_dict(cls, d, "DPO settings")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r"):
            if getattr(out, name) < 1:
                raise ValueError(f"DPO {name} must be >= 1")
        check_loss_weights(out.beta, out.sft_weight)
        return out


def check_loss_weights(beta: float, sft_weight: float) -> None:
    """DPO's beta (> 0) and the chosen texts' own loss weight (>= 0), both finite: for
    :class:`DPOSettings` and for ``learn``'s flags, which are refused before any model loads."""
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if not (sft_weight >= 0 and math.isfinite(sft_weight)):
        raise ValueError(f"sft_weight must be >= 0 and finite, got {sft_weight}")


@dataclass(frozen=True)
class Preference:
    """Two texts for one (context, source): ``chosen`` preferred over ``rejected``."""

    context: str
    source: str
    chosen: str
    rejected: str
    id: str = ""


@dataclass(frozen=True)
class ChainSpec:
    """How a chain-of-edits run writes its chains: ``None`` in place of one means a direct run."""

    costs: tuple[float, float, float]
    merge_gap: int | None
    chain_format: str

    @classmethod
    def of_run(cls, info: dict[str, Any]) -> ChainSpec | None:
        if info.get("mode") != "coe":
            return None
        from secondthoughts.decoding import chain_format, merge_gap
        from secondthoughts.edits import DEFAULT_COST_SETS

        costs = (info.get("cost_sets") or DEFAULT_COST_SETS)[0]
        return cls((float(costs[0]), float(costs[1]), float(costs[2])), merge_gap(info), chain_format(info))


def read_preferences(path: str | os.PathLike[str]) -> list[Preference]:
    """The pairs of a JSONL file (``context`` optional, ``source``, ``chosen``, ``rejected``, ``id``
    optional), as ``benchmarks/candidate_choice.py --write-pairs`` writes them; a bad row is a
    one-line ``DataError`` naming file, line and field."""
    from secondthoughts.data import DataError, RowError, jsonl_rows, pair_problem
    from secondthoughts.dataset_readers import optional_text, required_text

    out = []
    for line, row in jsonl_rows(Path(path)):
        try:
            if isinstance(row, RowError):
                raise row
            source, chosen, rejected = (required_text(row, k) for k in ("source", "chosen", "rejected"))  # cleaned
            if reason := pair_problem(source, chosen):  # a chosen copy of the source is no re-alignment
                raise RowError("chosen", reason)
            if chosen == rejected:
                raise RowError("rejected", "identical to 'chosen': a pair must prefer one text over another")
            out.append(Preference(optional_text(row, "context"), source, chosen, rejected, str(row.get("id") or "")))
        except RowError as e:
            raise DataError(e.message(str(path), line)) from None
    if not out:
        raise DataError(f"{path}: no preference pairs")
    return out


def target_over_source(examples: Sequence[Example]) -> list[Preference]:
    """The direct baseline's pairs: the value-aligned target over the unaligned source."""
    return [Preference(ex.context, ex.source, ex.target, ex.source, ex.id) for ex in examples]


def completion_ids(tokenizer: Any, text: str, source: str, chains: ChainSpec | None) -> list[int]:
    """What the run writes for ``text`` after the prompt: (its chain from ``source``,) the text, EOS."""
    from secondthoughts.ail import expert_chain
    from secondthoughts.sequences import encode_completion

    if chains is None:
        return encode_completion(tokenizer, None, text, source)
    return encode_completion(tokenizer, expert_chain(source, text, chains.costs, chains.merge_gap), text, source, chains.chain_format)


def preference_rows(tokenizer: Any, pairs: Sequence[Preference], max_length: int, chains: ChainSpec | None = None) -> tuple[list[dict[str, list[int]]], list[str]]:
    """TRL's tokenized preference format: the prompt, the chosen and the rejected completion
    (:func:`completion_ids`), and the ids of pairs left out because source and completions alone
    exceed ``max_length`` (as ``sequences.build_sequences`` drops such examples: TRL would cut the
    completion's end). The context is cut from the left so that the prompt leaves room for the
    longer completion, as ``sequences.encode`` cuts it."""
    from secondthoughts.sequences import encode_prompt

    rows, dropped = [], []
    for p in pairs:
        chosen, rejected = completion_ids(tokenizer, p.chosen, p.source, chains), completion_ids(tokenizer, p.rejected, p.source, chains)
        room = max_length - len(encode_prompt(tokenizer, "", p.source)) - max(len(chosen), len(rejected))
        if room < 0:
            dropped.append(p.id or p.source)
            continue
        rows.append({"prompt_ids": encode_prompt(tokenizer, p.context, p.source, room), "chosen_ids": chosen, "rejected_ids": rejected})
    return rows, dropped


def _trainer_class() -> Any:
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """TRL's trainer, fed rows already tokenized by secondthoughts (see the module docstring)."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    return PretokenizedDPOTrainer


def train_dpo(start: str | os.PathLike[str], pairs: Sequence[Preference], out: str | os.PathLike[str], settings: DPOSettings,
              *, seed: int = 0, progress: bool = True) -> Path:
    """Train DPO from the run ``start`` (direct or chain-of-edits) on ``pairs`` and write the run
    folder ``out`` (replaced if it holds an unfinished run: TRL's own checkpoints are not used, a
    partial run restarts)."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from secondthoughts import models
    from secondthoughts.policy import load_policy, save_policy
    from secondthoughts.realign import run_info
    from secondthoughts.runs import environment
    from secondthoughts.atomic import write_atomic, write_dir

    start, out = Path(start), Path(out)
    info = run_info(start)
    if not info or info.get("mode") not in ("direct", "coe"):
        raise ValueError(f"{start}: DPO starts from a `secondthoughts train` run (--mode direct or coe)")
    if not pairs:
        raise ValueError("no preference pairs to train DPO on")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # load_policy merges the run's adapter and puts a fresh LoRA (+ marker rows) on top: exactly
    # what refinement does, so the saved adapter combines the two the same way.
    policy, _, tok, start_lora = load_policy(str(start), lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, seed=seed, train_tokens=False)
    rows, dropped = preference_rows(tok, pairs, settings.max_length, ChainSpec.of_run(info))
    if not rows:
        raise ValueError(f"no preference pair fits in {settings.max_length} tokens (DPO max_length)")
    data = Dataset.from_list(rows)
    losses = [settings.loss_type, "sft"] if settings.sft_weight else [settings.loss_type]
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(out / "trainer"), beta=settings.beta, learning_rate=settings.lr, num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, max_length=settings.max_length, loss_type=losses,
        loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
        gradient_checkpointing=settings.gradient_checkpointing, seed=seed, data_seed=seed, logging_steps=5, save_strategy="no", report_to="none", use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), disable_tqdm=not progress, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = _trainer_class()(model=policy, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen copy of the fresh adapter
        model.delete_adapter("ref")
    how: list[str] = []

    def write(p: Path) -> None:
        how.append(save_policy(model, tok, p, start_lora, str(start)))
        carry_token_rows(start / "model", p)

    write_dir(out / "model", write)
    log = [{"step": r.get("step", 0), **r} for r in trainer.state.log_history]
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    run_info_out = {
        "train": {**info, "out": str(out)},  # the start's mode: Realigner decodes it like the start run
        "dpo": {**asdict(settings), "seed": seed, "start": str(start), "pairs": len(rows), "dropped": dropped, "saved_as": how[0]},
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
