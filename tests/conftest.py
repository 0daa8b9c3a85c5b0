"""Shared fixtures: tiny tokenizer / model / model folder / examples file (see tests/tiny.py)."""

from __future__ import annotations

import os

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's
# spinning threads slow each small op ~20x when another process holds a core. Set before
# torch is first imported; export OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the network (the hub is unreachable here and in CI). huggingface_hub reads these
# once, when first imported, so a test that sets them later is offline only if it runs first; set
# here, every test is, in any order (otherwise a hub look-up waits for network timeouts).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import tiny


@pytest.fixture
def tiny_tok() -> Any:
    return tiny.tiny_tokenizer()


@pytest.fixture
def tiny_lm(tiny_tok: Any) -> Any:
    return tiny.tiny_model(tiny_tok)


@pytest.fixture
def lora_rows(tiny_tok: Any, tiny_lm: Any) -> tuple[Any, list[int]]:
    """(tiny LoRA model with trainable edit-token rows, those token ids); rows and B matrices
    moved off their initial values, so every path changes the output."""
    import torch

    from secondthoughts import models

    ids = models.add_edit_tokens(tiny_lm, tiny_tok)
    model = models.apply_lora(tiny_lm, ids, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "trainable_tokens_delta" in n or "lora_B" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model, ids


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama + tokenizer saved as a local model folder (a stand-in for a hub id)."""
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def examples_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_examples_jsonl(tmp_path_factory.mktemp("data") / "examples.jsonl", n=24)


@pytest.fixture(scope="module")
def untrained() -> Any:
    """A ``Realigner`` on an untrained tiny model: it writes noise, which the chain constraint must
    keep valid (seed 6: its greedy chains use every op)."""
    from secondthoughts import models
    from secondthoughts.realign import Realigner

    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_model(tok, seed=6)
    models.add_edit_tokens(model, tok)
    return Realigner.from_model(model, tok)


@pytest.fixture(scope="module")
def voc() -> Any:
    """The edit vocabulary of the tiny tokenizer with the edit tokens added."""
    from secondthoughts import models
    from secondthoughts.edit_vocab import EditVocab

    tok = tiny.tiny_tokenizer()
    models.add_edit_tokens(tiny.tiny_model(tok), tok)
    return EditVocab.from_tokenizer(tok)


@pytest.fixture(scope="module")
def tok_with_edits() -> Any:
    from secondthoughts import models

    tok = tiny.tiny_tokenizer()
    models.add_edit_tokens(tiny.tiny_model(tok), tok)
    return tok


@pytest.fixture(autouse=True)
def _no_fault_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits the atomic writer's fault hook from the shell or from another test."""
    from secondthoughts import atomic

    monkeypatch.delenv(atomic.FAULT_ENV, raising=False)
    atomic.reset_fault_counts()


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Sets this process's fault hook (``SECONDTHOUGHTS_FAULT``, e.g. ``enospc@write:1``) for the test."""
    from secondthoughts import atomic

    def set_fault(spec: str) -> None:
        monkeypatch.setenv(atomic.FAULT_ENV, spec)
        atomic.reset_fault_counts()

    return set_fault
