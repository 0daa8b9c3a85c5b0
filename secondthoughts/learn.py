"""Learning from corrections: continue a trained run on the pairs a user fixed in the editor.

Or from preferences: ``LearnConfig(pairs=...)`` trains DPO (``dpo.train_dpo``: TRL's trainer, the run
itself as the reference) on pairs of texts for one source, one preferred over the other, e.g. a
reader's ratings of the run's own candidates (``benchmarks/candidate_choice.py --write-pairs``).
Such a run restarts rather than resumes; it writes ``dpo.train_dpo``'s run folder plus ``learn.json``.

``learn(LearnConfig(model="runs/aem", corrections="corrections.jsonl", out="runs/mine"))``
fine-tunes the run (``train --init-from``: a LoRA run keeps training its adapter) on the
corrections mixed with a replay sample of training data, so that it picks up what the user
wants without forgetting what it knew. The new run folder is an ordinary ``train`` run (it loads
in ``realign``, ``serve``, ``evaluate``, ``refine`` and ``bench``) plus::

    learn-data.jsonl   the examples it was trained on: corrections, then the replay sample
    learn.json         {"learn": LearnConfig, "corrections": n, "replay": n, "skipped": [...]}

Replay comes from ``replay_data``, or else from the training data the run records in its
``config.json`` when that file is still where it was.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from secondthoughts import atomic, runs, settings
from secondthoughts.data import DataError, Example, read_examples, write_examples
from secondthoughts.dataset_readers import read_dataset
from secondthoughts.dpo import check_loss_weights

_f = settings.setting

DATA_FILE = "learn-data.jsonl"
INFO_FILE = "learn.json"


@dataclass
class LearnConfig:
    """What a learning run depends on. Fields become ``secondthoughts learn`` flags."""

    model: str = _f("", "the trained run to start from (a `train`, `refine` or earlier `learn` run folder)")
    corrections: str = _f("", "corrections JSONL (context, source, target), e.g. saved by `secondthoughts serve`")
    pairs: str = _f("", "instead of --corrections: preference pairs JSONL (context, source, chosen, rejected) to train DPO on, "
                        "the run itself as the reference (e.g. benchmarks/candidate_choice.py --write-pairs)")
    beta: float = _f(0.1, "--pairs: DPO temperature, the strength of the implicit KL to the run")
    sft_weight: float = _f(1.0, "--pairs: weight of the chosen texts' own loss added to DPO's (RPO), so their likelihood does not fall")
    out: str = _f("runs/learned", "new run folder (the run in --model is left as it is)")
    replay_data: str = _f("", "examples to replay against forgetting; empty: the training data the run records, if still there")
    replay: float = _f(1.0, "replayed examples per correction (0: corrections only)")
    repeat: int = _f(1, "times each correction appears in the data (weights them above replay)")
    epochs: float = _f(3.0, "passes over corrections + replay")
    max_steps: int = _f(0, "optimizer steps; overrides --epochs when > 0")
    lr: float = _f(5e-4, "peak learning rate")
    batch_size: int = _f(4, "rows (--pairs: pairs) per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(0, "tokens per packed row (--pairs: per prompt + completion); 0: the run's own")
    skip_invalid: bool = _f(False, "skip invalid correction rows (each is named) instead of stopping at the first")
    seed: int = _f(0, "seeds the replay sample, data order and dropout")
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self) -> None:
        if self.replay < 0 or not math.isfinite(self.replay):
            raise ValueError(f"replay must be a finite number >= 0, got {self.replay}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        check_loss_weights(self.beta, self.sft_weight)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnConfig:
        return settings.from_dict(cls, d, "learning settings")


@dataclass
class LearnData:
    corrections: list[Example]
    replay: list[Example]
    skipped: list[str]  # "file:line: reason" of each correction row left out (skip_invalid)


def read_corrections(path: str | os.PathLike[str], skip_invalid: bool = False) -> tuple[list[Example], list[str]]:
    """The corrections file's pairs; a bad row is a one-line DataError naming file, line and
    field, or, with ``skip_invalid``, left out and named in the second list."""
    result = read_dataset("jsonl", path, skip_invalid=skip_invalid)
    skipped = [f"{s.file}:{s.line}: field {s.field!r}: {s.reason}" for s in result.skipped]
    if not result.examples:
        raise DataError(f"{path}: no corrections to learn from" + (f" ({len(skipped)} invalid rows skipped)" if skipped else ""))
    return result.examples, skipped


def replay_source(config: LearnConfig) -> str | None:
    """The file replay samples come from: ``replay_data``, else the run's recorded training data."""
    if config.replay == 0:
        return None
    if config.replay_data:
        return config.replay_data
    from secondthoughts.decoding import run_info

    recorded = (run_info(config.model) or {}).get("data", "")
    if not recorded or not Path(recorded).is_file():
        raise ValueError(
            f"--model {config.model}: its training data {recorded or '(none recorded)'} is not here for replay: "
            "pass --replay-data FILE (examples like the run was trained on) or --replay 0"
        )
    return str(recorded)


def gather(config: LearnConfig) -> LearnData:
    """Read corrections and draw the replay sample (seeded; corrections' own pairs left out)."""
    corrections, skipped = read_corrections(config.corrections, config.skip_invalid)
    source = replay_source(config)
    replay: list[Example] = []
    if source:
        seen = {(c.context, c.source) for c in corrections}
        pool = [ex for ex in read_examples(source) if (ex.context, ex.source) not in seen]
        n = min(len(pool), round(config.replay * len(corrections)))
        replay = random.Random(config.seed).sample(pool, n)
    return LearnData(corrections, replay, skipped)


def train_config(config: LearnConfig, data_file: Path) -> Any:
    """The ``TrainConfig`` of the learning run: the run's format and adapter, no held-out eval
    (tens of corrections leave nothing to hold out: the last model is kept)."""
    from secondthoughts.decoding import run_info
    from secondthoughts.sft import TrainConfig, init_settings

    inherited = init_settings(config.model)
    max_length = config.max_length or int((run_info(config.model) or {}).get("max_length", 512))
    return TrainConfig(
        **inherited, init_from=config.model, data=str(data_file), out=config.out, eval_fraction=0.0, epochs=config.epochs,
        max_steps=config.max_steps, lr=config.lr, batch_size=config.batch_size, grad_accum=config.grad_accum, max_length=max_length,
        warmup_ratio=0.0, seed=config.seed, progress=config.progress, checkpoint_every=1, log_every=1,
    )  # fmt: skip


def check(config: LearnConfig) -> None:
    """Everything that can be refused before a model loads: the run, the corrections and the replay
    file, or the pairs and the DPO settings."""
    if not config.model:
        raise ValueError("no run to start from: pass --model RUN")
    if bool(config.corrections) == bool(config.pairs):
        raise ValueError("pass --corrections corrections.jsonl or --pairs pairs.jsonl" + (", not both" if config.pairs else ""))
    from secondthoughts.sft import init_settings

    init_settings(config.model)
    if config.pairs:
        from secondthoughts.dpo import read_preferences

        dpo_settings(config)
        read_preferences(config.pairs)
        return
    read_corrections(config.corrections, config.skip_invalid)
    if source := replay_source(config):
        next(read_examples(source), None)


def dpo_settings(config: LearnConfig) -> Any:
    """The ``dpo.DPOSettings`` of a ``--pairs`` run (checked: a bad one is a one-line error); the new
    adapter's LoRA settings are DPO's defaults."""
    from secondthoughts.decoding import run_info
    from secondthoughts.dpo import DPOSettings

    max_length = config.max_length or int((run_info(config.model) or {}).get("max_length", 256))
    return DPOSettings.from_dict({
        "beta": config.beta, "lr": config.lr, "epochs": config.epochs, "max_steps": config.max_steps, "batch_size": config.batch_size,
        "grad_accum": config.grad_accum, "max_length": max_length, "sft_weight": config.sft_weight,
    })  # fmt: skip


def learn_pairs(config: LearnConfig) -> Path:
    """Train DPO from ``config.model`` on ``config.pairs`` into ``config.out`` (a new run folder);
    returns it."""
    from secondthoughts.dpo import read_preferences, train_dpo

    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # train_dpo replaces the folder it writes
        raise FileExistsError(f"{out} exists and is not an empty folder: choose another --out")
    check(config)
    train_dpo(config.model, read_preferences(config.pairs), out, dpo_settings(config), seed=config.seed, progress=config.progress)
    pairs = json.loads((out / "config.json").read_text(encoding="utf-8"))["dpo"]["pairs"]  # those that fit
    atomic.write_atomic(out / INFO_FILE, json.dumps({"learn": asdict(config), "pairs": pairs}, indent=2))
    return out


def learn(config: LearnConfig, *, resume: bool = False, stop_after: int | None = None) -> Any:
    """Write the learning data into ``config.out`` and train; returns ``sft.TrainResult``.
    ``resume`` continues a killed learning run from its checkpoint, on the data it wrote
    (``stop_after``: end after that many steps as if killed, for tests)."""
    from secondthoughts import sft

    if config.pairs:
        raise ValueError("learning from pairs trains DPO: call learn_pairs")
    out = Path(config.out)
    data_file = out / DATA_FILE
    if resume:
        saved = LearnConfig.from_dict(json.loads((out / INFO_FILE).read_text(encoding="utf-8"))["learn"])
        if asdict(saved) != {**asdict(config), "progress": saved.progress}:
            raise ValueError(f"resume: settings differ from the run's {INFO_FILE}")
    else:
        runs.run_start(out, resume=False)  # refuses a folder that holds a run
        check(config)
        data = gather(config)
        out.mkdir(parents=True, exist_ok=True)
        write_examples(data_file, [ex for ex in data.corrections for _ in range(config.repeat)] + data.replay)
        info = {"learn": asdict(config), "corrections": len(data.corrections), "replay": len(data.replay), "skipped": data.skipped}
        atomic.write_atomic(out / INFO_FILE, json.dumps(info, indent=2))
    return sft.train(train_config(config, data_file), resume=resume, stop_after=stop_after)
