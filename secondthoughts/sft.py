"""Augmented edits modeling (AEM): fine-tune a causal LM on ``context + source <|sep|> chain +
target`` (or the direct-rewrite baseline ``... <|sep|> target``), loss after the separator.

A small loop on accelerate rather than a Trainer, for three reasons: resume must continue
exactly (the data position is a pure function of the step, RNG states are saved per process);
the vocabulary projection runs only on positions that carry loss (prompt tokens skip the
lm_head, the largest single matmul of a small model); and packed rows need no attention mask.

Run folder (``TrainConfig.out``)::

    config.json      {"train": TrainConfig, "data": counts and length report, "env": versions}
    metrics.jsonl    one line per logged step ({"step", "loss", "lr", "tokens_per_s", ...}) and
                     per evaluation ({"step", "eval_loss", "best"})
    model/           best model so far: LoRA adapter (or the full model) as safetensors + tokenizer;
                     ``models.load(run_folder)`` reads it
    checkpoint/      latest training state for ``--resume``: trainable weights, optimizer,
                     scheduler, per-process RNG states, step and early-stopping state
    README.md        model card: data, method, hyperparameters, results
    loss.png         training and held-out loss against steps (shown in the model card)

Every file and folder is written through :mod:`secondthoughts.runs`: synced, then renamed into
place, so a killed run (or a power loss) leaves the previous complete version; a checkpoint
records the size and sha256 of its files and is verified before a run resumes from it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secondthoughts import atomic, models, runs, settings
from secondthoughts.chain_text import CHAIN_FORMATS
from secondthoughts.completion_loss import CompletionLoss
from secondthoughts.data import Example, read_run_examples, split_examples
from secondthoughts.edits import DEFAULT_COST_SETS, parse_cost_sets
from secondthoughts.sequences import (
    IGNORE_INDEX,
    MODES,
    LengthReport,
    Row,
    build_sequences,
    collate,
    pack,
    unpacked,
)
from secondthoughts.train_card import write_model_card

_f = settings.setting


@dataclass
class TrainConfig:
    """Everything a training run depends on. Fields become ``secondthoughts train`` flags."""

    data: str = _f("", "normalized examples JSONL (context, source, target), e.g. from `secondthoughts prepare`")
    out: str = _f("runs/aem", "run folder: config, metrics, best model, checkpoint, model card")
    model: str = _f("embedded", "base model: 'embedded' (SmolLM2-135M-Instruct), a hub id, or a local folder")
    init_from: str = _f(
        "",
        "a trained run folder to continue (train, refine or learn): its weights (a LoRA run keeps training its adapter), "
        "base model, mode and chain format carry over; the new run loads alone",
    )
    mode: str = _f("coe", "'coe': source <|sep|> chain-of-edits + target (AEM); 'direct': source <|sep|> target", choices=MODES)
    eval_data: str = _f("", "held-out examples JSONL; empty: hold out eval_fraction of --data")
    eval_fraction: float = _f(0.05, "fraction of --data held out for eval when --eval-data is empty (0: no eval)")
    eval_max: int = _f(500, "at most this many held-out examples")
    chain_format: str = _f(
        "anchored",
        "coe chains: 'anchored' (an edit is found by the text it copies; a position only where that is ambiguous), "
        "'positional' (every edit with its source-token position, as runs made before it) "
        "or 'inline' (the source text kept between edits written out, so each edit stands where it ends)",
        choices=CHAIN_FORMATS,
    )
    cost_sets: list = _f(  # noqa: RUF009 (_f copies lists)
        [list(c) for c in DEFAULT_COST_SETS], "CoE augmentation: (insert, delete, replace) cost sets, e.g. '1,1,2;1,1,3'",
        metavar="I,D,R;...", type=settings.parsed(parse_cost_sets), whole=True, shown=";".join(",".join(f"{c:g}" for c in cs) for cs in DEFAULT_COST_SETS),
    )
    merge_gap: int = _f(
        3,
        "coe chains: edits that at most N kept tokens separate become one replace (fewer, longer edits; "
        "0 joins only edits that touch; 3, the default, read far more coherent than the paper's chains); "
        "-1: the minimum-cost chains as they are (the paper)",
    )
    max_length: int = _f(512, "tokens per sequence and per packed row; longer: context cut from the left, else dropped")
    packing: bool = _f(True, "pack several sequences into each row (attention and loss stay per sequence)")
    batch_size: int = _f(8, "rows per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    rows_per_pass: int = _f(
        2,
        "rows run through forward and backward at once, their gradients summed into the micro-batch's: "
        "memory follows this, the batch and its gradient do not (0: the whole micro-batch)",
    )
    epochs: float = _f(3.0, "passes over the training rows (paper: 3)")
    max_steps: int = _f(0, "optimizer steps; overrides --epochs when > 0")
    lr: float = _f(0.0, "peak learning rate; 0: 2e-4 with LoRA, 3e-5 with --full")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.03, "fraction of steps with linear warmup")
    scheduler: str = _f("cosine", "learning-rate schedule after warmup", choices=("cosine", "linear", "constant_with_warmup"))
    max_grad_norm: float = _f(1.0, "gradient clipping (0: off)")
    full: bool = _f(False, "full fine-tuning instead of LoRA")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    eval_every: int = _f(100, "evaluate every N optimizer steps (and at the end)")
    patience: int = _f(5, "stop after N evaluations without improvement (paper: 5; 0: never)")
    min_delta: float = _f(0.0, "an eval loss must drop by more than this to count as an improvement")
    checkpoint_every: int = _f(0, "write a resumable checkpoint every N steps (0: at each evaluation)")
    log_every: int = _f(10, "append a metrics line every N steps")
    seed: int = _f(0, "seeds data order, LoRA init and dropout")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    dtype: str = _f("auto", "weights dtype: auto (fp32; bf16 autocast on CUDA), float32, bfloat16", choices=("auto", "float32", "bfloat16"))
    trust_remote_code: bool = _f(False, "allow custom model code from the hub")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.cost_sets = [[float(c) for c in cs] for cs in self.cost_sets]
        if any(len(cs) != 3 for cs in self.cost_sets) or not self.cost_sets:
            raise ValueError(f"cost_sets must be a list of (insert, delete, replace), got {self.cost_sets!r}")
        if self.merge_gap < -1:
            raise ValueError(f"merge_gap must be >= 0, or -1 (off), got {self.merge_gap}")
        for name in ("batch_size", "grad_accum", "max_length", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.rows_per_pass < 0:
            raise ValueError(f"rows_per_pass must be >= 0 (0: the whole micro-batch), got {self.rows_per_pass}")

    @property
    def peak_lr(self) -> float:
        return self.lr or (3e-5 if self.full else 2e-4)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return settings.from_dict(cls, d, "training settings")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        return settings.merged(cls, "training settings", settings.file_settings(fields(cls), str(path), "training settings"), overrides)


# ---------------------------------------------------------------- data


def hold_out(examples: Sequence[Example], fraction: float, max_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval): whole examples held out (all chains of a pair stay on one side), chosen by
    ``data.split_examples``' seeded id hash, so the choice does not depend on file order."""
    n_eval = min(max_eval, math.ceil(len(examples) * fraction)) if fraction > 0 else 0
    if n_eval and len(examples) - n_eval < 1:
        raise ValueError(f"{len(examples)} examples are too few to hold out {n_eval} for eval")
    parts = split_examples(examples, {"eval": n_eval, "train": None}, seed)
    return parts["train"], parts["eval"]


def load_examples(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    train, held_out = read_run_examples(config.data, config.eval_data, config.eval_max)
    return (train, held_out) if config.eval_data else hold_out(train, config.eval_fraction, config.eval_max, config.seed)


# What a run started from another (``init_from``) shares with it: the base its adapter sits on,
# the text format the model writes, and the adapter's shape. The CLI fills them in from the run.
INHERITED = ("model", "mode", "chain_format", "merge_gap", "full", "lora_r", "lora_alpha", "lora_dropout")


def init_settings(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``INHERITED`` settings of the trained run ``run``, read from its folder alone (no model
    loads). A one-line ValueError when it is not a run or the base model it needs is missing."""
    from secondthoughts.decoding import run_info

    path, model_dir = Path(run), Path(run) / "model"
    info = run_info(path)
    if info is None or not model_dir.is_dir():
        raise ValueError(f"--init-from {run}: not a trained run (needs model/ and a config.json with training settings)")
    inherited = {k: info[k] for k in INHERITED if k in info}
    inherited.setdefault("chain_format", "positional")  # runs from before anchored chains
    inherited.setdefault("merge_gap", -1)  # runs from before merged chains
    adapter = model_dir / "adapter_config.json"
    if adapter.is_file():
        a = json.loads(adapter.read_text(encoding="utf-8"))
        base = str(a.get("base_model_name_or_path") or "")
        if base != models.EMBEDDED and not Path(base).exists() and (Path(base).is_absolute() or base.startswith(".") or base.count("/") != 1):
            raise ValueError(f"--init-from {run}: its base model {base!r} is missing (adapter_config.json, field base_model_name_or_path)")
        inherited.update(model=base, full=False, lora_r=a["r"], lora_alpha=a["lora_alpha"], lora_dropout=a["lora_dropout"])
    elif (model_dir / "config.json").is_file():
        inherited["full"] = True
    else:
        raise ValueError(f"--init-from {run}: model/ holds neither a LoRA adapter nor a full model")
    return inherited


def check_init_from(config: TrainConfig) -> None:
    """A run started from another must keep its format and adapter shape, and a trained run is
    continued with ``init_from``, not used as a base ``model`` (one-line errors)."""
    base = Path(config.model)
    if not config.init_from and ((base / "model").is_dir() or (base / "adapter_config.json").is_file()):
        run = base.parent if (base / "adapter_config.json").is_file() and base.name == "model" else base
        raise ValueError(f"--model {config.model} is a trained run, not a base model: continue it with --init-from {run}")
    if not config.init_from:
        return
    inherited = init_settings(config.init_from)
    differ = {k: (v, getattr(config, k)) for k, v in inherited.items() if getattr(config, k) != v}
    if differ:
        raise ValueError(f"--init-from {config.init_from}: settings differ from the run's (run, given): {differ}")


def build_model(config: TrainConfig) -> tuple[nn.Module, Any, list[int]]:
    """Base model + edit tokens, wrapped with LoRA unless ``config.full``; or, with
    ``config.init_from``, the run's model with its trained weights (and adapter) trainable."""
    dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    torch.manual_seed(config.seed)
    load_kw = {"dtype": dtype, "trust_remote_code": config.trust_remote_code, "device": "cpu"}
    if config.init_from:  # a LoRA run comes back as a PeftModel whose adapter keeps training
        model, tokenizer = models.load(config.init_from, trainable=True, **load_kw)
        token_ids = models.edit_token_ids(tokenizer)
    else:
        model, tokenizer = models.load(config.model, **load_kw)
        token_ids = models.add_edit_tokens(model, tokenizer)
    if config.full:
        model.requires_grad_(True)
    elif not config.init_from:
        torch.manual_seed(config.seed)  # LoRA A matrices
        model = models.apply_lora(model, token_ids, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    if config.gradient_checkpointing:
        models.enable_checkpointing(model)
        if not config.full:
            model.enable_input_require_grads()
    return model, tokenizer, token_ids


# ---------------------------------------------------------------- run folder I/O


def save_model(model: nn.Module, tokenizer: Any, path: Path, base_name: str) -> None:
    if hasattr(model, "peft_config"):
        # Record the name the user gave ("embedded"), not the cache folder it resolved to.
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base_name
        # The adapter keeps the new token rows (trainable tokens); the resized embedding matrix
        # itself is the base plus deterministic rows, so it is not stored (113 MB on SmolLM2).
        model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
        (path / "README.md").unlink(missing_ok=True)  # PEFT's empty template; the run has its own card
    else:
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


# ---------------------------------------------------------------- training


@dataclass
class TrainState:
    """What a checkpoint restores besides tensors."""

    step: int = 0
    tokens: int = 0  # non-padding tokens trained on, all processes
    elapsed_s: float = 0.0
    best_eval: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False


@dataclass
class TrainResult:
    out: Path
    state: TrainState
    steps_total: int
    report: LengthReport
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main_process: bool = True


def _rows_tokens(rows: Sequence[Row]) -> tuple[int, int]:
    """(loss tokens, non-padding tokens)."""
    return sum(sum(label != IGNORE_INDEX for label in r.labels) for r in rows), sum(len(r) for r in rows)


def _pad_rows(rows: list[Row], n: int, filler: Row) -> list[Row]:
    # A process with nothing left in the last batch still runs a forward (DDP needs every process
    # in each backward), on a row whose labels are all ignored: it adds no loss and no gradient.
    return rows + [Row(filler.input_ids, [IGNORE_INDEX] * len(filler), filler.position_ids)] * (n - len(rows))


def evaluate(loss_module: nn.Module, rows: Sequence[Row], batch_size: int, pad_id: int, accelerator: Any) -> float:
    """Token-mean completion loss over ``rows``, split across processes."""
    loss_module.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    n_batches = math.ceil(len(rows) / (batch_size * world))
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for b in range(n_batches):
            start = (b * world + rank) * batch_size
            mine = _pad_rows(list(rows[start : start + batch_size]), batch_size, rows[0])
            batch = {k: v.to(accelerator.device) for k, v in collate(mine, pad_id).items()}
            with accelerator.autocast():
                total[0] += loss_module(**batch).double()
            total[1] += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    total = accelerator.reduce(total, "sum")
    loss_module.train()
    return float(total[0] / total[1])


def _run_info(config: TrainConfig, data: dict[str, int], report: Any, plan: dict[str, int], model: nn.Module) -> dict[str, Any]:
    """config.json of a new run."""
    trainable, total = models.count_parameters(model)
    data = {**data, "length_report": {k: v for k, v in asdict(report).items() if k != "dropped_ids"}, "dropped_ids": report.dropped_ids[:100]}
    return {"train": asdict(config), "data": data, "plan": plan, "model": {"trainable_parameters": trainable, "parameters": total},
            "env": runs.environment()}  # fmt: skip


def _training_rows(config: TrainConfig, tokenizer: Any, main: bool) -> tuple[list[Row], list[Row], Any, dict[str, int]]:
    """(training rows, evaluation rows, the training length report, counts for config.json).

    Rows are packed once from a seeded shuffle; each epoch reshuffles the row order. The data
    position is then a function of the step alone, which makes resume exact."""
    train_ex, eval_ex = load_examples(config)
    shape = {
        "mode": config.mode, "max_length": config.max_length, "cost_sets": [tuple(c) for c in config.cost_sets],
        "chain_format": config.chain_format, "merge_gap": config.merge_gap if config.merge_gap >= 0 else None,
    }  # fmt: skip
    train_seqs, report = build_sequences(train_ex, tokenizer, **shape)  # type: ignore[arg-type]
    eval_seqs, eval_report = build_sequences(eval_ex, tokenizer, **shape)  # type: ignore[arg-type]
    if not train_seqs:
        raise ValueError(f"no training sequences left: {report.summary()}")
    if main:
        print(f"train: {report.summary()}\neval: {eval_report.summary()}", flush=True)
    shuffled = list(train_seqs)
    random.Random(config.seed).shuffle(shuffled)
    rows = pack(shuffled, config.max_length) if config.packing else unpacked(shuffled)
    eval_rows = pack(eval_seqs, config.max_length) if config.packing else unpacked(eval_seqs)
    counts = {"train_examples": len(train_ex), "eval_examples": len(eval_ex), "train_sequences": len(train_seqs),
              "eval_sequences": len(eval_seqs), "train_rows": len(rows)}  # fmt: skip
    return rows, eval_rows, report, counts


def _accumulate_gradients(ddp_module: nn.Module, accelerator: Any, step_rows: list[Row], config: TrainConfig, pad_id: int, n_loss: int) -> torch.Tensor:
    """Forward and backward of this process's share of one optimizer step's rows; returns the
    summed loss. Rows are independent sequences, so a backward per pass of ``rows_per_pass`` rows
    sums to the whole micro-batch's gradient with only one pass's activations alive."""
    world, rank, micro = accelerator.num_processes, accelerator.process_index, config.batch_size
    per_pass = min(config.rows_per_pass or micro, micro)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for k in range(config.grad_accum):
        start = (k * world + rank) * micro
        mine = _pad_rows(step_rows[start : start + micro], micro, step_rows[0])
        passes = [mine[a : a + per_pass] for a in range(0, micro, per_pass)]
        for j, rows_now in enumerate(passes):
            batch = {key: v.to(accelerator.device) for key, v in collate(rows_now, pad_id).items()}
            sync = k == config.grad_accum - 1 and j == len(passes) - 1
            with nullcontext() if sync else accelerator.no_sync(ddp_module), accelerator.autocast():
                loss = ddp_module(**batch)
                # Normalize by the step's loss tokens over all processes (known to each from the
                # shared row list); DDP averages gradients, hence the factor `world`.
                accelerator.backward(loss * world / max(n_loss, 1))
            loss_sum += loss.detach().double()
    return loss_sum


def _begin(config: TrainConfig, ckpt_dir: Path | None, training: tuple[Any, Any, Any], world: int, rank: int, main: bool, info: Any, total: int) -> TrainState:
    """The state a run starts from: its checkpoint's, or a new run's (seeded; ``runs.begin_training``)."""
    saved = runs.begin_training(config.out, ckpt_dir, training, world, rank, main, info, total)
    if saved is not None:
        return TrainState(**saved)
    torch.manual_seed(config.seed + 1000 * rank)  # dropout differs per process, as it should
    random.seed(config.seed)
    np.random.seed(config.seed)
    return TrainState()


def _optimizer_step(accelerator: Any, params: list[nn.Parameter], optimizer: Any, scheduler: Any, max_grad_norm: float) -> None:
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _step_rows(rows: Sequence[Row], seed: int, step: int, steps_per_epoch: int, global_rows: int) -> list[Row]:
    """The rows of a step: the step's slice of its epoch's order (``runs.epoch_order``)."""
    epoch, index = divmod(step, steps_per_epoch)
    order = runs.epoch_order(len(rows), seed, epoch)
    return [rows[i] for i in order[index * global_rows : (index + 1) * global_rows]]


def _evaluate_and_keep(
    ddp_module: nn.Module, eval_rows: Sequence[Row], config: TrainConfig, pad_id: int, state: TrainState, accelerator: Any, save: Callable[[], None]
) -> dict[str, Any]:
    """Held-out loss now; ``save()`` the model when it is the best so far; early stopping after
    ``patience`` evaluations without a gain of ``min_delta``. Its metrics row."""
    loss = evaluate(ddp_module, eval_rows, config.batch_size, pad_id, accelerator)
    better = state.best_eval is None or loss < state.best_eval - config.min_delta
    if better:
        state.best_eval, state.best_step, state.bad_evals = loss, state.step, 0
        save()
    else:
        state.bad_evals += 1
    if config.patience and state.bad_evals >= config.patience:
        state.stopped_early = True
    return {"step": state.step, "eval_loss": loss, "best": better}


def _accelerator(dtype: str) -> Any:
    """bf16 autocast on a CUDA device that has it (``--dtype auto``), else fp32. ``cpu=True``
    without CUDA: accelerate then reads torchrun's LOCAL_RANK/WORLD_SIZE as multi-CPU DDP over
    gloo (``accelerate launch --multi_gpu --num_processes N`` or ``torchrun`` on a CPU box)."""
    from accelerate import Accelerator

    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and dtype == "auto"
    return Accelerator(mixed_precision="bf16" if cuda_bf16 else "no", cpu=not torch.cuda.is_available())


def _optimizer(loss_module: Any, config: TrainConfig, total_steps: int) -> tuple[list[torch.nn.Parameter], Any, Any]:
    """The trainable parameters, AdamW over them and the learning-rate schedule."""
    from transformers import get_scheduler

    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay)
    return params, optimizer, get_scheduler(config.scheduler, optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)


def _train_step(ddp_module: Any, accelerator: Any, step_rows: Sequence[Row], config: TrainConfig, pad_id: int, opt: tuple[Any, Any, Any]) -> tuple[float, int]:
    """One optimizer step on a step's rows: the mean loss over their completion tokens (all
    processes') and this process's tokens."""
    params, optimizer, scheduler = opt
    n_loss, n_tokens = _rows_tokens(step_rows)
    loss_sum = _accumulate_gradients(ddp_module, accelerator, step_rows, config, pad_id, n_loss)
    _optimizer_step(accelerator, params, optimizer, scheduler, config.max_grad_norm)
    return float(accelerator.reduce(loss_sum, "sum")) / max(n_loss, 1), n_tokens


def train(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Run AEM fine-tuning as configured; see the module docstring for the run folder.

    ``resume`` continues from the run folder's checkpoint with the saved config. ``stop_after``
    ends the run after that many steps as if killed (for tests of resume).
    """
    from tqdm.auto import tqdm

    out = Path(config.out)
    check_init_from(config)
    ckpt_dir = runs.run_start(out, resume)  # the verified checkpoint, or None for a new run
    if resume:
        runs.check_same_settings(out, "train", config)

    accelerator = _accelerator(config.dtype)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it

    model, tokenizer, _ = build_model(config)
    rows, eval_rows, report, counts = _training_rows(config, tokenizer, main)
    micro = config.batch_size
    global_rows = micro * world * config.grad_accum
    steps_per_epoch = math.ceil(len(rows) / global_rows)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    loss_module = CompletionLoss(model)
    params, optimizer, scheduler = _optimizer(loss_module, config, total_steps)

    plan = {"world_size": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
    state = _begin(config, ckpt_dir, (model, optimizer, scheduler), world, rank, main, lambda: _run_info(config, counts, report, plan, model), total_steps)
    accelerator.wait_for_everyone()

    ddp_module = accelerator.prepare(loss_module)
    ddp_module.train()
    metrics_path = out / "metrics.jsonl"
    history: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        history.append(row)
        if main:
            runs.append_jsonl(metrics_path, row)

    def save_model_now() -> None:
        if main:
            atomic.write_dir(out / "model", lambda p: save_model(model, tokenizer, p, config.model))
        accelerator.wait_for_everyone()

    bar = tqdm(total=total_steps, initial=state.step, disable=not (main and config.progress), desc="train", dynamic_ncols=True)
    checkpoint_every = config.checkpoint_every or config.eval_every
    while state.step < total_steps and not state.stopped_early:
        step_rows = _step_rows(rows, config.seed, state.step, steps_per_epoch, global_rows)
        t0 = time.perf_counter()
        step_loss, n_tokens = _train_step(ddp_module, accelerator, step_rows, config, pad_id, (params, optimizer, scheduler))
        dt = time.perf_counter() - t0
        state.step += 1
        state.tokens += n_tokens
        state.elapsed_s += dt
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{n_tokens / dt:.0f}", best=f"{state.best_eval:.3f}" if state.best_eval is not None else "-")
        if state.step % config.log_every == 0 or state.step == total_steps:
            log({
                "step": state.step, "epoch": round(state.step / steps_per_epoch, 4), "loss": step_loss,
                "lr": scheduler.get_last_lr()[0], "tokens": state.tokens, "tokens_per_s": n_tokens / dt,
                "step_s": dt, "elapsed_s": round(state.elapsed_s, 3), "peak_memory_mb": runs.peak_memory_mb(),
            })  # fmt: skip
        if eval_rows and (state.step % config.eval_every == 0 or state.step == total_steps):
            log(_evaluate_and_keep(ddp_module, eval_rows, config, pad_id, state, accelerator, save_model_now))
        if state.step % checkpoint_every == 0 or state.step == total_steps or state.stopped_early:
            runs.save_training(out, accelerator, model, optimizer, scheduler, asdict(state))
        if stop_after is not None and state.step >= stop_after:
            break
    bar.close()

    finished = state.step >= total_steps or state.stopped_early
    if finished and not eval_rows:  # nothing chose a best model: keep the last one
        save_model_now()
    if finished and main:
        write_model_card(out)
    accelerator.wait_for_everyone()
    return TrainResult(out, state, total_steps, report, history, main)
