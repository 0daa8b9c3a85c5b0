"""Run folders on disk: verified checkpoints, the metrics log, and what train and refine share
(settings checks, RNG state, the epoch order), on top of :mod:`~secondthoughts.atomic`'s writes.

* :class:`CheckpointWriter` writes a training checkpoint as a folder swapped in whole
  (``atomic.commit_dir``) and records the size and sha256 of every file in its ``state.json``;
  :func:`resume_checkpoint` checks them before a run resumes, falls back to ``.checkpoint.old``
  (left by a crash between the two renames), and otherwise refuses with the reason. Checkpoints
  written before files were recorded are accepted without the check.
* :func:`append_jsonl` appends a synced line to ``metrics.jsonl``; :func:`read_metrics` tolerates
  and reports a torn last line (a kill in the middle of an append), which
  :func:`truncate_metrics` drops when a run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from secondthoughts.atomic import PathLike, commit_dir, fault_point, fsync_file, write_atomic


CHECKPOINT = "checkpoint"
CHECKPOINT_OLD = ".checkpoint.old"
CHECKPOINT_TMP = ".checkpoint.tmp"
STATE = "state.json"


class CheckpointError(ValueError):
    """No complete checkpoint to resume from; the message says what is wrong with each."""


# ---------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` except state.json: relative path -> bytes and sha256."""
    return {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE
    }


class CheckpointWriter:
    """One checkpoint of the run folder ``out``, built in ``.checkpoint.tmp``.

    The main process calls :meth:`begin`, every process may :meth:`add` its own files (the
    caller puts barriers between), and the main process :meth:`commit` s: ``state.json`` gets
    ``meta`` and the size and sha256 of every file, then the folder is swapped in as
    ``checkpoint``. A failure removes the temporary folder (disk full: the space comes back);
    the previous checkpoint stays as it was.
    """

    def __init__(self, out: PathLike):
        self.out = Path(out)
        self.tmp = self.out / CHECKPOINT_TMP

    def begin(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)

    def add(self, name: str, write: Callable[[Path], None]) -> None:
        """``write(path)`` writes the file ``name``; it is synced before the next one starts."""
        with self._cleanup_on_error():
            path = self.tmp / name
            write(path)
            fsync_file(path)
            fault_point("checkpoint-file")

    def add_torch(self, name: str, obj: Any) -> None:
        import torch

        self.add(name, lambda p: torch.save(obj, p))

    def add_tensors(self, name: str, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.add(name, lambda p: save_file(tensors, str(p)))

    def commit(self, meta: dict[str, Any]) -> Path:
        final = self.out / CHECKPOINT
        with self._cleanup_on_error():
            state = self.tmp / STATE
            state.write_text(json.dumps({**meta, "files": _files(self.tmp)}), encoding="utf-8")
            fsync_file(state)
            fault_point("checkpoint-state")
            commit_dir(self.tmp, final)
        return final

    @contextmanager
    def _cleanup_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def find_checkpoint(out: PathLike) -> Path | None:
    """The checkpoint folder a run would resume from (not verified: see :func:`resume_checkpoint`)."""
    for p in (Path(out) / CHECKPOINT, Path(out) / CHECKPOINT_OLD):
        if (p / STATE).is_file():
            return p
    return None


def verify_checkpoint(path: PathLike) -> str | None:
    """What is wrong with the checkpoint folder ``path``, or None when it is complete."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE}"
    except (OSError, ValueError) as e:
        return f"{STATE} unreadable ({e})"
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        return f"{STATE} holds no training state"
    files = meta.get("files")
    if files is None:  # written before checkpoints recorded their files: trusted as before
        return None
    for name, record in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} missing"
        if (size := p.stat().st_size) != record["bytes"]:
            return f"{name} has {size} bytes, {record['bytes']} were written"
        if _sha256(p) != record["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def resume_checkpoint(out: PathLike) -> Path:
    """The checkpoint to resume ``out`` from, verified: ``checkpoint``, else the previous one
    (``.checkpoint.old``). FileNotFoundError when there is none, CheckpointError when none is
    complete."""
    out = Path(out)
    problems = []
    for p in (out / CHECKPOINT, out / CHECKPOINT_OLD):
        if not p.exists():
            continue
        problem = verify_checkpoint(p)
        if problem is None:
            if problems:
                print(f"warning: {'; '.join(problems)}; resuming from {p}", file=sys.stderr, flush=True)
            return p
        problems.append(f"{p}: {problem}")
    if not problems:
        raise FileNotFoundError(f"{out} has no checkpoint to resume from")
    raise CheckpointError(f"no complete checkpoint to resume from: {'; '.join(problems)}")


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def run_start(out: PathLike, resume: bool) -> Path | None:
    """The verified checkpoint to resume from, or None for a new run (refused when ``out``
    already holds one)."""
    out = Path(out)
    if resume:
        return resume_checkpoint(out)
    if (out / "config.json").exists() or find_checkpoint(out):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return None


def environment(**extra: str) -> dict[str, str]:
    """The versions a run's ``config.json`` records under ``"env"``: Python, torch, transformers,
    peft and accelerate, then ``extra`` (e.g. ``trl=...``)."""
    import platform

    import accelerate
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__, **extra,
    }  # fmt: skip


def peak_memory_mb() -> float:
    """The process's peak memory so far, in MB: on CUDA the most allocated on the current device,
    else the resident set's high-water mark (what ``/usr/bin/time -v`` reports at the end), so a
    run's metrics say at which step its peak came."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain lists and tensors, so that
    ``torch.load(weights_only=True)`` reads them back."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- metrics.jsonl


@dataclass
class MetricsLog:
    rows: list[dict[str, Any]]
    torn: str | None = None  # the unreadable last line a killed writer left, if any


def append_jsonl(path: PathLike, row: dict[str, Any]) -> None:
    """Append one line and sync it: a logged row survives a crash that comes after."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: PathLike) -> MetricsLog:
    """The rows of a ``metrics.jsonl``. An unreadable last line (torn by a kill) is returned
    apart; an unreadable line before it is damage, a ValueError naming the line."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    rows: list[dict[str, Any]] = []
    for k, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif k == len(lines) - 1:
            return MetricsLog(rows, line)
        else:
            raise ValueError(f"{path}:{n}: not a JSON object; the metrics log is damaged")
    return MetricsLog(rows)


def truncate_metrics(path: PathLike, step: int) -> None:
    """On resume: keep the rows up to ``step`` (the checkpoint's); the resumed run logs the rest
    again. A torn last line is dropped and reported."""
    path = Path(path)
    if not path.is_file():
        return
    log = read_metrics(path)
    if log.torn is not None:
        print(f"{path}: dropped a torn last line ({len(log.torn)} characters) left by the interrupted run", file=sys.stderr, flush=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in log.rows if r.get("step", 0) <= step))


# ---------------------------------------------------------------- training checkpoints (train, refine)


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters, detached on the CPU (what a checkpoint keeps of a model)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    """Copy ``trainable_state``'s tensors back; a checkpoint of another model shape is an error."""
    import torch

    params = dict(model.named_parameters())
    absent = sorted(set(state) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    if absent or missing:
        raise ValueError(f"checkpoint does not fit the model: unexpected {absent[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_training(out: PathLike, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """A training checkpoint, committed at once (:class:`CheckpointWriter`): every process's RNG,
    then (main process) trainable weights, optimizer, schedule and the loop's ``state``."""
    main = accelerator.is_main_process
    ck = CheckpointWriter(out)
    if main:
        ck.begin()
    accelerator.wait_for_everyone()
    ck.add_torch(f"rng-{accelerator.process_index}.pt", rng_state())
    accelerator.wait_for_everyone()
    if main:
        ck.add_tensors("trainable.safetensors", trainable_state(model))
        ck.add_torch("optimizer.pt", optimizer.state_dict())
        ck.add_torch("scheduler.pt", scheduler.state_dict())
        ck.commit({"state": state, "world_size": accelerator.num_processes})
    accelerator.wait_for_everyone()


def restore_training(ckpt: PathLike, model: Any, optimizer: Any, scheduler: Any, world: int, rank: int) -> dict[str, Any]:
    """What :func:`save_training` wrote, loaded back into the model, optimizer, schedule and this
    process's RNG; returns the loop's state."""
    import torch
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    ck = read_checkpoint(ckpt)
    if ck["world_size"] != world:
        raise ValueError(f"checkpoint was written by {ck['world_size']} processes, this run has {world}")
    load_trainable_state(model, load_file(ckpt / "trainable.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(ckpt / f"rng-{rank}.pt", weights_only=True))
    return ck["state"]


def check_same_settings(out: PathLike, section: str, config: Any, ignore: tuple[str, ...] = ("progress",)) -> None:
    """A resumed run must have the settings it started with: ``config.json[section]``, read as
    ``type(config).from_dict`` reads it (settings it lacks take their defaults), against the
    settings dataclass ``config``, keys in ``ignore`` aside."""
    saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))[section]
    # Both as config.json holds them: tuples are lists.
    saved, given = (json.loads(json.dumps(asdict(c))) for c in (type(config).from_dict(saved), config))
    diff = {k: (v, given.get(k)) for k, v in saved.items() if k not in ignore and given.get(k) != v}
    if diff:
        raise ValueError(f"resume: settings differ from the run's config.json (saved, given): {diff}")


def begin_training(
    out: PathLike, ckpt: Path | None, training: tuple[Any, Any, Any], world: int, rank: int, main: bool, info: Callable[[], dict[str, Any]], total: int
) -> dict[str, Any] | None:
    """Where a train / refine loop starts. Resuming (``ckpt`` from :func:`run_start`): the
    (model, optimizer, scheduler) ``training`` and this process's RNG restored, metrics logged
    after the checkpoint dropped; returns the loop's saved state. A new run: ``info()`` written
    as config.json and an empty metrics.jsonl (main process); returns None (seeding is the caller's)."""
    out = Path(out)
    if ckpt is not None:
        state = restore_training(ckpt, *training, world, rank)
        if main:
            truncate_metrics(out / "metrics.jsonl", state["step"])
            print(f"resumed {out} at step {state['step']}/{total}", flush=True)
        return state
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", json.dumps(info(), indent=2))
        write_atomic(out / "metrics.jsonl", "")
    return None


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of ``n`` training items in an epoch: its own shuffle, a pure function of (seed,
    epoch), so that a resumed run takes the items the uninterrupted one would have."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order
