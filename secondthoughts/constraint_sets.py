"""What ``constrained.ChainConstraint`` allowed at each position of completions already written,
for the RL loss: sampling under the constraint draws from the model's distribution renormalized
over these sets, so the policy's and the reference's log-probabilities of such samples are
computed on the same sets. Kept as index sets (``CompletionSets``) and built into dense masks one
chunk of positions at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from secondthoughts.constrained import SourceIndex, advance, allowed_parts, start_state
from secondthoughts.edit_vocab import EditVocab


@dataclass
class CompletionSets:
    """The tokens ``ChainConstraint`` allowed at each position of some completions, completion
    after completion, kept as index sets: position ``i`` allows ``shared[base[i]]`` (one of the
    vocabulary's precomputed masks; ``NO_BASE``: none) plus ``ids[i]``, or everything where
    ``base[i] == ALL``. A dense (positions, vocab) mask costs a vocabulary row (~49 kB on
    SmolLM2) per position; ``dense(start, stop)`` builds the rows one chunk of a forward needs.
    ``outside``: positions whose token fell outside its set (an unconstrained sample, a chain cut
    short), which allow all."""

    vocab_size: int
    shared: list[torch.Tensor]
    base: list[int]
    ids: list[list[int]]
    outside: int = 0

    NO_BASE: ClassVar[int] = -1
    ALL: ClassVar[int] = -2

    def __len__(self) -> int:
        return len(self.base)

    def part(self, start: int, stop: int) -> CompletionSets:
        """Positions ``start:stop`` (the shared masks are shared, not copied)."""
        return CompletionSets(self.vocab_size, self.shared, self.base[start:stop], self.ids[start:stop])

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` as a (stop - start, vocab_size) boolean mask."""
        stop = len(self) if stop is None else stop
        out = torch.zeros((stop - start, self.vocab_size), dtype=torch.bool)
        rows, cols = [], []
        for r, i in enumerate(range(start, stop)):
            b = self.base[i]
            if b == self.ALL:
                out[r] = True
                continue
            if b >= 0:
                m = self.shared[b]
                k = min(len(m), self.vocab_size)
                out[r, :k] = m[:k]
            for t in self.ids[i]:
                if t < self.vocab_size:
                    rows.append(r)
                    cols.append(t)
        if rows:
            out[rows, cols] = True
        return out

    def allows(self, i: int, token: int) -> bool:
        b = self.base[i]
        if b == self.ALL:
            return True
        if token >= self.vocab_size:
            return False
        return token in self.ids[i] or (b >= 0 and token < len(self.shared[b]) and bool(self.shared[b][token]))


def completion_sets(
    voc: EditVocab,
    sources: Sequence[str],
    completions: Sequence[Sequence[int]],
    vocab_size: int,
    then: Literal["stop", "target"] = "stop",
    chain_format: str = "anchored",
) -> CompletionSets:
    """The tokens ``ChainConstraint`` allowed at every position of each completion (see
    ``CompletionSets``); positions whose token lies outside their set allow all.

    Sampling under the constraint draws from the model's distribution renormalized over these
    sets, so the log-probabilities of such samples (and their KL to a reference) are computed on
    the same sets.
    """
    sets = CompletionSets(vocab_size, [], [], [])
    slot: dict[int, int] = {}  # id() of a shared mask -> its index in sets.shared
    for source, ids in zip(sources, completions, strict=True):
        src = SourceIndex(source, chain_format)
        state = start_state()
        for t in ids:
            parts = allowed_parts(state, voc, src, then)
            if parts is None:
                sets.base.append(CompletionSets.ALL)
                sets.ids.append([])
            else:
                mask, extra = parts
                if mask is not None and id(mask) not in slot:
                    slot[id(mask)] = len(sets.shared)
                    sets.shared.append(mask)
                sets.base.append(CompletionSets.NO_BASE if mask is None else slot[id(mask)])
                sets.ids.append(extra)
            if not sets.allows(len(sets) - 1, t):
                sets.base[-1], sets.ids[-1] = CompletionSets.ALL, []
                sets.outside += 1
            state = advance(state, t, voc, src)
    return sets


def completion_masks(
    voc: EditVocab,
    sources: Sequence[str],
    completions: Sequence[Sequence[int]],
    vocab_size: int,
    then: Literal["stop", "target"] = "stop",
    chain_format: str = "anchored",
) -> tuple[torch.Tensor, int]:
    """``completion_sets`` as one dense (total tokens, vocab_size) mask, and the count of
    positions outside their sets. A vocabulary row per position: for a few positions only."""
    sets = completion_sets(voc, sources, completions, vocab_size, then, chain_format)
    return sets.dense(), sets.outside
