"""Linearize examples into token ids and loss labels, and pack them into rows.

The format, token by token (``[BOS]`` only for tokenizers that add one by default)::

    CoE:    [BOS] context <|src|> source <|sep|> chain target <eos>
    direct: [BOS] context <|src|> source <|sep|> target <eos>

``chain`` is ``chain_text.render_chain`` of the edits from source to target: anchored by default,
e.g. ``<|rep|><|old|> hits<|new|> talks<|ins|><|new|> to<|eoc|>`` (spans copied from
the source), positional, ``<|rep|>1<|old|> hits<|new|> talks<|ins|>2<|new|> to<|eoc|>``
(positions index ``edits.tokenize(source)``), or inline, ``<|keep|>Tom<|rep|><|old|> hits<|new|>
talks<|ins|><|new|> to<|eoc|>`` (the kept text before each edit written out); the source sits alone between
``<|src|>`` and ``<|sep|>``. The loss covers only what follows ``<|sep|>``. Context, source and target are
encoded with ``split_special_tokens=True``, so user text can never produce a marker; the
chain's user text is escaped by ``render_compact``.

Too long (``max_length``): the context is cut from the left (the words nearest the source
stay); if source and completion alone do not fit, the sequence is dropped. Both are counted
in :class:`LengthReport`, which callers print.

Packing puts several sequences in one row with ``position_ids`` restarting at 0 for each.
Batches carry no attention mask: transformers (4.53+, 5.x) then reads the restarts in
``position_ids`` as sequence boundaries and builds a block-diagonal causal mask (sdpa/eager)
or varlen flash attention, so packed sequences never see each other. Padding gets its own
restart, so it is a separate segment too. The forward must pass ``use_cache=False``: with a KV
cache transformers skips this detection and packed sequences would attend to each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from secondthoughts.chain_text import CHAIN_FORMATS, EOC, render_chain
from secondthoughts.data import Example
from secondthoughts.edits import (
    DEFAULT_COST_SETS,
    Costs,
    Edit,
    augment_chains,
    tokenize,
)
from secondthoughts.models import SEP, SRC

IGNORE_INDEX = -100
Mode = Literal["coe", "direct"]
MODES: tuple[str, ...] = ("coe", "direct")


@dataclass(frozen=True)
class Encoded:
    """One training sequence. ``labels`` is ``IGNORE_INDEX`` on the prompt."""

    input_ids: list[int]
    labels: list[int]
    example_id: str = ""
    costs: Costs | None = None  # the cost set that inferred this chain (CoE)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class LengthReport:
    """What happened to over-long examples; never silent."""

    max_length: int
    examples: int = 0
    sequences: int = 0
    context_truncated: int = 0
    dropped: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.examples} examples -> {self.sequences} sequences (max_length {self.max_length}); "
            f"context cut from the left in {self.context_truncated}, dropped {self.dropped} "
            f"(source + completion alone too long)"
        )


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    """User text: markers and the model's own special tokens stay plain characters."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _special_id(tokenizer: Any, token: str) -> int:
    # convert_tokens_to_ids, not get_vocab(): the latter copies the whole vocabulary per call.
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise KeyError(f"tokenizer lacks {token!r}; call models.add_edit_tokens first")
    return i


def _prefix_ids(tokenizer: Any) -> list[int]:
    # Whatever the tokenizer puts around empty text by default (BOS for Llama-2 style, nothing
    # for SmolLM2): the model was pretrained that way.
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def _prompt_pieces(tokenizer: Any, context: str, source: str) -> tuple[list[int], list[int], list[int]]:
    """(head, context ids, ``<|src|>`` source ``<|sep|>`` ids). Only the context may be cut."""
    src = [_special_id(tokenizer, SRC), *_text_ids(tokenizer, source), _special_id(tokenizer, SEP)]
    return _prefix_ids(tokenizer), _text_ids(tokenizer, context), src


def _keep_right(ids: list[int], n: int) -> list[int]:
    return ids[len(ids) - n :] if n > 0 else []


def encode_prompt(tokenizer: Any, context: str, source: str, max_context_tokens: int | None = None) -> list[int]:
    """The prompt for inference: everything up to and including ``<|sep|>``."""
    head, ctx, src = _prompt_pieces(tokenizer, context, source)
    if max_context_tokens is not None and len(ctx) > max_context_tokens:
        ctx = _keep_right(ctx, max_context_tokens)
    return head + ctx + src


def completion_text(edits: Sequence[Edit] | None, target: str, source: str, chain_format: str = "anchored") -> str:
    """What the model writes after ``<|sep|>`` (without EOS): chain + target, or the target."""
    return target if edits is None else render_chain(edits, source, chain_format) + target


def split_completion(text: str) -> tuple[str, str]:
    """Generated CoE text -> (chain text including ``<|eoc|>``, target). Without ``<|eoc|>``
    the whole text is the (unfinished) chain."""
    i = text.find(EOC)
    if i < 0:
        return text, ""
    return text[: i + len(EOC)], text[i + len(EOC) :]


def encode_completion(tokenizer: Any, edits: Sequence[Edit] | None, target: str, source: str, chain_format: str = "anchored") -> list[int]:
    """Completion ids: the chain in ``chain_format`` (``chain_text.render_chain``), target, EOS."""
    chain = list(tokenizer(render_chain(edits, source, chain_format), add_special_tokens=False)["input_ids"]) if edits is not None else []
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    return chain + _text_ids(tokenizer, target) + [tokenizer.eos_token_id]


def encode(
    tokenizer: Any,
    example: Example,
    edits: Sequence[Edit] | None,
    max_length: int,
    *,
    costs: Costs | None = None,
    chain_format: str = "anchored",
) -> tuple[Encoded | None, bool]:
    """One sequence, or None if it cannot fit; the flag says whether context was cut."""
    head, ctx, src = _prompt_pieces(tokenizer, example.context, example.source)
    completion = encode_completion(tokenizer, edits, example.target, example.source, chain_format)
    room = max_length - len(head) - len(src) - len(completion)
    if room < 0:
        return None, False
    cut = len(ctx) > room
    if cut:
        ctx = _keep_right(ctx, room)
    prompt = head + ctx + src
    return Encoded(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, example.id, costs), cut


def build_sequences(
    examples: Iterable[Example],
    tokenizer: Any,
    *,
    mode: Mode = "coe",
    max_length: int = 512,
    cost_sets: Sequence[Costs] = DEFAULT_COST_SETS,
    chain_format: str = "anchored",
    merge_gap: int | None = None,
) -> tuple[list[Encoded], LengthReport]:
    """All training sequences: in CoE mode one per distinct chain that ``cost_sets`` infer
    (the paper's augmentation), in direct mode one per example. ``chain_format``: "anchored"
    (edits found by the text they copy, positions only where that is ambiguous), "positional"
    (every edit with its source-token position) or "inline" (the kept text between edits written
    out, so each edit stands where the text so far ends). ``merge_gap``: edits that at most this many
    kept tokens separate become one (``edits.merge_close_edits``); None: the chains as inferred."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if chain_format not in CHAIN_FORMATS:
        raise ValueError(f"chain_format must be one of {CHAIN_FORMATS}, got {chain_format!r}")
    report = LengthReport(max_length)
    out: list[Encoded] = []
    for ex in examples:
        report.examples += 1
        if mode == "coe":
            chains: list[tuple[Costs | None, list[Edit] | None]] = list(
                augment_chains(tokenize(ex.source), tokenize(ex.target), cost_sets, merge_gap)
            )
        else:
            chains = [(None, None)]
        for costs, edits in chains:
            enc, cut = encode(tokenizer, ex, edits, max_length, costs=costs, chain_format=chain_format)
            if enc is None:
                report.dropped += 1
                report.dropped_ids.append(ex.id)
                continue
            report.context_truncated += cut
            out.append(enc)
    report.sequences = len(out)
    return out, report


# ---------------------------------------------------------------- packing and batches


@dataclass(frozen=True)
class Row:
    """One model input row: one or more sequences back to back."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(sequences: Sequence[Encoded], max_length: int) -> list[Row]:
    """First-fit packing in the given order: each sequence goes into the first row it fits in."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for s in sequences:
        if len(s) > max_length:
            raise ValueError(f"sequence {s.example_id!r} has {len(s)} tokens > max_length {max_length}")
        for k, r in enumerate(room):
            if len(s) <= r:
                rows[k].append(s)
                room[k] -= len(s)
                break
        else:
            rows.append([s])
            room.append(max_length - len(s))
    return [_row(r) for r in rows]


def _row(parts: Sequence[Encoded]) -> Row:
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for s in parts:
        ids += s.input_ids
        labels += s.labels
        pos += range(len(s))
    return Row(ids, labels, pos)


def unpacked(sequences: Sequence[Encoded]) -> list[Row]:
    return [_row([s]) for s in sequences]


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest. No ``attention_mask`` on purpose: see the module docstring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        pos[i, :n] = torch.tensor(r.position_ids)
        pos[i, n:] = torch.arange(width - n)  # padding restarts: its own segment
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def count_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss (the shift by one drops each row's first label, always ignored)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
