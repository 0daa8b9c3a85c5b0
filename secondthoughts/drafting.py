"""Greedy decoding that drafts several tokens and verifies them in one forward pass, with a
chain-aware drafter: much of a chain of edits is fixed by its source.

``greedy_generate`` is a plain greedy loop over a KV cache (batch size 1): a drafter proposes
tokens, one forward pass scores them all, the longest prefix the model agrees with is kept
plus the model's own next token, and the cache is cropped to what was kept. The logits
processors (e.g. :class:`~secondthoughts.constrained.ChainConstraint`) see exactly the
sequences plain greedy would show them, so the output is plain greedy's, token for token
(up to floating-point differences between scoring one token and several at once).

:class:`ChainDrafter` walks the chain grammar (``constrained.advance``) over the generated ids:

- inside a span (after ``<|del|>``/``<|rep|>`` [POS] ``<|old|>``) the rest is the source from where
  the span stands (an anchored span: its first candidate that matches what was written; before
  any is written, the guessed position below): it drafts the source's remaining tokens, as the
  tokenizer splits them; the model's only choice is where the span ends;
- in an inline chain, ``<|keep|>`` first and then the source, and after an edit marker the
  ``<|old|>`` (``<|new|>``) it must write; the model chooses where kept text and spans end;
- after an edit marker it drafts ``<|old|>`` when the chain is anchored (``<|new|>`` for an insert
  after a delete or replace: most often it goes right where that edit ends); after a complete position,
  ``<|old|>`` (``<|new|>`` for an insert) and then the span;
- a token the grammar forces is drafted as it is;
- the chain's first marker is guessed as ``<|rep|>`` (it rides along with the prompt's pass);
- a new edit's position is guessed: where the grammar first allows it after the previous edit
  (one changed block), after the first word for the first edit;
- elsewhere (the new text of an edit, a target) it may fall back to prompt lookup: the tokens
  that followed the latest earlier occurrence of the last n-gram.

On Moral Stories about a third of a chain's tokens are spans, which is what makes apply mode
(the chain only) decode faster per token than generate mode (chain then target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from secondthoughts.constrained import DONE, OP, POS, SPAN, ChainState, SourceIndex, advance, allowed, start_state

from secondthoughts.edit_vocab import EditVocab

Processor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


class Drafter(Protocol):
    def __call__(self, seq: Sequence[int], gen: Sequence[int], k: int) -> list[int]:
        """At most ``k`` guessed next tokens after ``seq`` (prompt + ``gen``, the generated ids)."""
        ...


@dataclass
class DraftStats:
    """What drafting did for one sequence: forward passes, drafted and accepted draft tokens."""

    forwards: int = 0
    drafted: int = 0
    accepted: int = 0


# ---------------------------------------------------------------- drafters


def ngram_lookup(seq: Sequence[int], k: int, max_ngram: int = 2, min_ngram: int = 1) -> list[int]:
    """Prompt lookup: the ``k`` tokens that followed the latest earlier occurrence of the
    sequence's last n-gram (longest n first, down to ``min_ngram``); [] when there is none."""
    n_seq = len(seq)
    for n in range(min(max_ngram, n_seq - 1), min_ngram - 1, -1):
        tail = list(seq[n_seq - n :])
        for start in range(n_seq - n - 1, -1, -1):  # latest match first: the nearest copy
            if list(seq[start : start + n]) == tail:
                return list(seq[start + n : start + n + k])
    return []


class PromptLookup:
    """``ngram_lookup`` as a drafter, with its own draft length (prompt lookup's
    ``num_output_tokens``)."""

    def __init__(self, tokens: int = 4, max_ngram: int = 2, min_ngram: int = 1):
        self.tokens, self.max_ngram, self.min_ngram = tokens, max_ngram, min_ngram

    def __call__(self, seq: Sequence[int], gen: Sequence[int], k: int) -> list[int]:
        return ngram_lookup(seq, min(k, self.tokens), self.max_ngram, self.min_ngram)


# An edit's new text: only a match of 2+ tokens predicts it well enough (on Moral Stories a
# one-token match is wrong ~85% of the time, and a rejected draft costs a wider forward pass).
TEXT_LOOKUP = PromptLookup(tokens=4, max_ngram=3, min_ngram=2)


class ChainDrafter:
    """Drafts a chain of edits for one source from the grammar state of the ids generated so far.

    ``start``: the state after a forced prefix (``constrained.start_state``). ``text_lookup``:
    the drafter where the source fixes nothing inside the chain (None: no draft there; on
    Moral Stories an edit's new text repeats the prompt rarely: lookup pays for its wider
    forward passes only on a match of two tokens or more, see ``TEXT_LOOKUP``);
    ``target_lookup``: the drafter after ``<|eoc|>`` (generate mode's target).
    """

    def __init__(
        self,
        voc: EditVocab,
        tokenizer: Any,
        source: str,
        start: ChainState | None = None,
        *,
        text_lookup: Drafter | None = None,
        target_lookup: Drafter | None = None,
        chain_format: str = "anchored",
    ):
        self.voc, self.tokenizer = voc, tokenizer
        self.src = SourceIndex(source, chain_format)
        self.states = [start or start_state()]  # states[i]: after _gen[:i]
        self._gen: list[int] = []
        self.text_lookup, self.target_lookup = text_lookup, target_lookup
        self._span_ids: dict[int, tuple[list[int], dict[int, int]]] = {}
        self._digits: dict[int, list[int]] = {}

    def state(self, gen: Sequence[int]) -> ChainState:
        """The grammar state after ``gen``, advanced from the longest prefix already walked."""
        same = 0
        for a, b in zip(self._gen, gen):  # decoding only appends, so this is all of _gen there
            if a != b:
                break
            same += 1
        del self.states[same + 1 :], self._gen[same:]
        for t in gen[same:]:
            self.states.append(advance(self.states[-1], t, self.voc, self.src))
            self._gen.append(t)
        return self.states[-1]

    def span_tokens(self, pos: int) -> tuple[list[int], dict[int, int]]:
        """The source from ``pos`` as a span, in the tokenizer's ids (as training tokenized spans),
        and {bytes before token j: j} for resuming after the bytes already written."""
        if pos not in self._span_ids:
            full, _ = self.src.span(pos)
            ids = self.tokenizer(full.decode("utf-8"), add_special_tokens=False, split_special_tokens=True)["input_ids"]
            at, offsets = 0, {}
            for j, t in enumerate(ids):
                offsets[at] = j
                at += len(self.voc.pieces[t] or b"")
            self._span_ids[pos] = (ids, offsets)
        return self._span_ids[pos]

    @staticmethod
    def _likely_pos(state: ChainState) -> int:
        """The likeliest position of a new edit: right where the grammar allows after an edit (a
        delete or insert after a replace, ...: one changed block), past the first word for a
        chain's first edit (a Moral Stories sentence starts with its subject's name)."""
        return state.lo if state.prev else state.lo + 1

    def _guess_pos(self, state: ChainState) -> list[int]:
        """Digits of ``_likely_pos``."""
        pos = self._likely_pos(state)
        if str(pos) not in self.src.positions(state.op, state.lo, self.src.here(state.op, state.prev)):
            return []
        if pos not in self._digits:
            self._digits[pos] = self.tokenizer(str(pos), add_special_tokens=False)["input_ids"]
        return self._digits[pos]

    def _structural(self, state: ChainState) -> tuple[list[int], bool]:
        """(tokens the source fixes or suggests from ``state``, whether drafting may go on after them)."""
        voc = self.voc
        if state.phase == SPAN:
            pos = state.pos
            if pos < 0:  # anchored: the first candidate that matches, or the likeliest one at first
                # an insert's anchor is the token before it; after a delete or replace, a token past the one where it ends
                likely = self._likely_pos(state) - (state.op == "insert" and not (state.prev and self.src.here(state.op, state.prev)))
                pos = next((p for p in state.cands if p == likely or state.buf), -1)
                if pos < 0:
                    return [], False
            ids, offsets = self.span_tokens(pos)
            j = offsets.get(len(state.buf))
            if j is None:
                return [], False
            if state.op == "insert":  # an anchor is one source token
                end = offsets.get(self.src.one_token(pos))
                ids = ids[: end if end is not None and end > j else j + 1]
            return ids[j:], False  # where a span ends is the model's call
        if state.phase == OP and not state.prev and self.src.inline and voc.keep in (allowed(state, voc, self.src, "stop") or ()):
            # An inline chain most often starts by keeping the subject: <|keep|> and then the source.
            return [voc.keep], True  # type: ignore[list-item]
        if state.phase == POS and self.src.inline:  # forced: the edit's content
            return ([voc.new], False) if state.op == "insert" else ([voc.old], True)
        if state.phase == OP and not state.prev and voc.rep in (allowed(state, voc, self.src, "stop") or ()):
            # A chain's first edit, drafted with the prompt (nearly free there): most often a
            # replace of what the subject does.
            return [voc.rep], True
        if state.phase == POS and not state.buf:
            here = self.src.here(state.op, state.prev)
            if here and state.prev:  # an insert after a delete or replace: most often right where it ends
                return [voc.new], False
            if self.src.anchored and self.src.anchors(state.op, state.lo, here):
                return [voc.old], True
            return self._guess_pos(state), True
        if state.phase == POS:
            follow = voc.new if state.op == "insert" else voc.old
            ok = allowed(state, voc, self.src, "stop")
            if isinstance(ok, list) and follow in ok:  # a complete position: guess it ends here
                return [follow], follow == voc.old  # then the span
            return [], False
        if state.phase in (OP, POS):
            ok = allowed(state, voc, self.src, "stop")
            if isinstance(ok, list) and len(ok) == 1:  # forced by the grammar
                return ok, ok[0] != voc.eoc
        return [], False

    def __call__(self, seq: Sequence[int], gen: Sequence[int], k: int) -> list[int]:
        state = self.state(gen)
        out: list[int] = []
        while len(out) < k and state.phase != DONE:
            ids, more = self._structural(state)
            ids = ids[: k - len(out)]
            for t in ids:
                state = advance(state, t, self.voc, self.src)
            out += ids
            if not ids or not more:
                break
        fallback = self.target_lookup if state.phase == DONE else self.text_lookup
        if not out and fallback is not None:
            out = fallback(seq, gen, k)
        return out


# ---------------------------------------------------------------- the loop


def _process(processors: Sequence[Processor], seq: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
    if not processors:
        return scores
    ids = torch.tensor([list(seq)], dtype=torch.long)
    for p in processors:
        scores = p(ids, scores)  # type: ignore[arg-type]
    return scores


@torch.inference_mode()
def greedy_generate(
    model: Any,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    stops: Sequence[int] = (),
    processors: Sequence[Processor] = (),
    drafter: Drafter | None = None,
    max_draft: int = 24,
) -> tuple[list[int], DraftStats]:
    """Greedy decoding of one sequence with drafts: the generated ids (ending with the stop
    token that ended them, if any) and drafting statistics. Same ids as ``model.generate`` with
    ``do_sample=False``, these ``logits_processor`` and ``eos_token_id=stops``."""
    stop = set(stops)
    cache = DynamicCache(config=model.config)
    seq, gen, pending = list(prompt), [], list(prompt)  # pending: in seq, not yet in the cache
    stats = DraftStats()
    while len(gen) < max_new_tokens:
        room = max_new_tokens - len(gen) - 1  # the model's own token comes on top of the draft
        draft = drafter(seq, gen, min(max_draft, room)) if drafter is not None and room > 0 else []
        x = torch.tensor([pending + draft], dtype=torch.long, device=model.device)
        # Only the positions that choose a token need logits: the prompt's would cost more than its layers.
        logits = model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=len(draft) + 1).logits[0]
        stats.forwards += 1
        stats.drafted += len(draft)
        kept: list[int] = []
        for i in range(len(draft) + 1):
            t = int(_process(processors, seq + kept, logits[i : i + 1].float()).argmax(-1))
            kept.append(t)
            if t in stop or i == len(draft) or t != draft[i]:
                break
        stats.accepted += len(kept) - 1
        rejected = len(draft) + 1 - len(kept)
        if rejected:  # the cache keeps seq and the accepted drafts (a negative crop removes, in 4.x and 5.x)
            cache.crop(-rejected)
        seq += kept
        gen += kept
        pending = [kept[-1]]
        if kept[-1] in stop:
            break
    return gen, stats
