"""Re-align text with a trained model: decode a chain of edits, apply it, continue from a
corrected prefix.

Three modes, one prompt (``context <|src|> source <|sep|>``; prompts, context cut, token budget and
left-padded batches come from :mod:`secondthoughts.decoding`, which RL rollouts share):

- ``apply`` (default for chain-of-edits runs): generate the chain only, stopping at ``<|eoc|>``,
  and apply it to the source. The text is consistent with the chain by construction, and it
  skips the target: on Moral Stories a gold chain is ~42 SmolLM2 tokens, the target ~18.
- ``generate``: the paper's decoding, chain then target. ``generated_target`` is what the model
  wrote after the chain; ``text`` is still the chain applied, and ``disagrees`` says whether
  the two differ.
- ``direct``: for runs trained with ``--mode direct`` (no chain): the model writes the text; the
  chain shown is inferred from source to text.

Greedy apply mode one text at a time drafts by default (``draft="auto"``): the chain's
spans and likely positions come from the source, several tokens are checked in one forward
pass, and the output is plain greedy's (``secondthoughts.drafting``).

With ``constrained=True`` (default) a :class:`~secondthoughts.constrained.ChainConstraint`
masks every token that would break the chain, so every chain parses and applies. A chain cut by
``max_new_tokens`` is closed after its last complete edit (``truncated=True``).

Best of N (``best_of``, ``rerank``): the greedy chain and N constrained chains sampled in one
batch sharing the prompt's prefill, the text a reranker scores highest kept
(:func:`~secondthoughts.best_of.choose_best`). Read blind, alignment and coherence scorers made
text worse than greedy; a rewrite model's likelihood (``likelihood.RewriteLikelihood``) made it
more coherent at 6-10x the latency, and subtracting the share of the source a text keeps and its
log word count made it more aligned, and rating heads (readers' ratings, learned) added to that
score more coherent (docs/coherence.md): the commands' default (``decoding.BEST_OF``, ``SOURCE_PENALTY``,
``LENGTH_PENALTY``, ``HEADS``), while this API decodes greedily unless ``best_of`` and ``rerank``
are given.

Repeats (``no_repeat``, default 4): a constrained chain never writes a token 4-gram twice in the
text it adds (:class:`~secondthoughts.repeats.RepeatGuard`), the model's most visible slip.

Interactive correction (the paper's "second thoughts" by a person): ``prefix`` forces the first
edits (compact string, readable lines, or ``Edit`` records), validated against the source, and
the model continues after them. A compact prefix ending in ``<|eoc|>`` is the whole chain.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from secondthoughts import decoding, models
from secondthoughts.best_of import Reranker, choose_best
from secondthoughts.chain_text import (
    CHAIN_FORMATS,
    EOC,
    KEEP,
    SPECIAL_TOKENS,
    parse_chain,
    render_chain,
    render_compact,
)
from secondthoughts.constrained import ChainConstraint, start_state
from secondthoughts.decoding import (
    BEST_OF_TEMPERATURE,
    DEFAULT_CHAIN_FORMAT,
    NO_REPEAT,
    chain_format,
    run_info,
)
from secondthoughts.drafting import (
    TEXT_LOOKUP,
    ChainDrafter,
    PromptLookup,
    greedy_generate,
)
from secondthoughts.edit_vocab import EditVocab
from secondthoughts.edits import Edit, EditError, infer_text_edits, realigned_text
from secondthoughts.readable import ChainLike, as_chain, render_readable
from secondthoughts.repeats import RepeatGuard
from secondthoughts.sequences import split_completion

Mode = Literal["apply", "generate", "direct"]
MODES: tuple[str, ...] = ("apply", "generate", "direct")
Draft = Literal["auto", "chain", "none"]
DRAFTS: tuple[str, ...] = ("auto", "chain", "none")


# ---------------------------------------------------------------- results


@dataclass
class RealignResult:
    """One re-alignment. ``text`` is always the chain applied to the source (the source itself
    when the chain is invalid, see ``error``); in generate mode ``generated_target`` is what the
    model wrote after the chain (the paper's output)."""

    context: str
    source: str
    mode: str
    chain: list[Edit] = field(default_factory=list)
    compact: str = ""
    readable: str = ""
    text: str = ""
    generated_target: str | None = None  # generate mode
    disagrees: bool | None = None  # generate mode: generated_target != text
    valid: bool = True  # the chain parsed, applied and left some word
    error: str | None = None  # why not valid
    truncated: bool = False  # max_new_tokens cut the chain; closed after its last complete edit
    prefix_edits: int = 0  # how many leading edits were forced by ``prefix``
    # Seconds (prompt_s, generate_s, total_s) of the batch that produced this result, its size,
    # and the tokens this result generated (new_tokens); best-of-N: total_s and new_tokens of
    # all its candidates' decoding and reranking.
    timings: dict[str, float] = field(default_factory=dict)
    candidates: int = 1  # best-of-N: how many chains (the greedy one and the samples) this one was chosen from
    rerank_score: float | None = None  # best-of-N: its score under the reranker
    # best-of-N: every distinct candidate text once, in decoding order (the greedy chain's first),
    # as {"text", "valid", "score"} (and "heads": the rating heads' raw {"align", "coherence"} of those they read);
    # written out only when asked (realign --keep-candidates).
    alternatives: list[dict[str, Any]] | None = None
    # best-of-N: the penalties the alternatives' scores already include ({"source", "length"}), so that
    # a reader can recover the likelihood from them; written out with the alternatives.
    score_penalties: dict[str, float] | None = None

    def to_dict(self, alternatives: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["chain"] = [e.to_dict() for e in self.chain]
        if not alternatives:
            del d["alternatives"], d["score_penalties"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RealignResult:
        return cls(**{**d, "chain": [Edit.from_dict(e) for e in d.get("chain", [])]})


@dataclass(frozen=True)
class _Job:
    context: str
    source: str
    prefix: tuple[Edit, ...]
    closed: bool


def _job(item: Any, index: int) -> _Job:
    """An item of ``realign_many``: (context, source), {"context", "source", "prefix"?}, or an
    object with ``context`` and ``source`` (e.g. ``data.Example``)."""
    if isinstance(item, Mapping):
        context, source, prefix = item.get("context", ""), item.get("source"), item.get("prefix")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        (context, source), prefix = item, None
    elif hasattr(item, "source"):
        context, source, prefix = getattr(item, "context", ""), item.source, None
    else:
        raise TypeError(f"item {index}: expected (context, source), a mapping or an Example, got {type(item).__name__}")
    if not isinstance(source, str) or not isinstance(context, str):
        raise TypeError(f"item {index}: context and source must be strings")
    edits, closed = as_chain(prefix, source, what=f"item {index}: prefix") if prefix else ([], False)
    return _Job(context, source, tuple(edits), closed)


# ---------------------------------------------------------------- the re-aligner


# The re-aligner shipped in the package, used when no --model is given (its model card: README.md there).
DEFAULT_RUN = "default-run"


def default_run() -> Path | None:
    """The run folder shipped in the package (``secondthoughts/examples/default-run``), if installed."""
    from importlib import resources

    path = Path(str(resources.files("secondthoughts") / "examples" / DEFAULT_RUN))
    return path if (path / "model" / "adapter_config.json").is_file() else None


class Realigner:
    """A model that re-aligns text: ``Realigner("runs/aem").realign(context, source)``.

    ``run``: a ``secondthoughts train`` run folder (its ``config.json`` tells the training mode
    and max length), or anything ``models.load`` reads. LoRA adapters are merged into the base
    weights for inference (same outputs, faster). One call at a time: a server serializes
    requests (generation already uses every core).
    """

    def __init__(self, run: str | os.PathLike[str], *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        model, tokenizer = models.load(str(run), device=device, dtype=dtype)
        if hasattr(model, "merge_and_unload"):  # ours alone, so merging in place is safe
            model = model.merge_and_unload()
        info = run_info(run) or {}
        self._setup(model, tokenizer, info.get("mode"), info.get("max_length"), str(run), chain_format(info))

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, *, trained_mode: str | None = None, max_length: int | None = None, chain_format: str = DEFAULT_CHAIN_FORMAT
    ) -> Realigner:
        """Wrap a loaded model (edit tokens already added), e.g. a policy during RL or a test
        model. A ``PeftModel`` is used as it is (not merged: the caller may still train it)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, trained_mode, max_length, type(model).__name__, chain_format)
        return self

    def _setup(self, model: Any, tokenizer: Any, trained_mode: str | None, max_length: int | None, name: str, chain_format: str) -> None:
        if chain_format not in CHAIN_FORMATS:
            raise ValueError(f"chain_format must be one of {CHAIN_FORMATS}, got {chain_format!r}")
        self.chain_format = chain_format  # as the model writes chains
        self.model = model
        self.tokenizer = tokenizer
        self.trained_mode = trained_mode
        self.max_length = max_length
        self.name = name
        self._vocab: EditVocab | None = None
        vocab = tokenizer.get_vocab()  # a copy of the whole vocabulary (~0.1 s for 49k tokens): once
        self.has_edit_tokens = all(t in vocab for t in SPECIAL_TOKENS) and (chain_format != "inline" or KEEP in vocab)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def vocab(self) -> EditVocab:
        if self._vocab is None:
            self._vocab = EditVocab.from_tokenizer(self.tokenizer)
        return self._vocab

    def _render(self, chain: Sequence[Edit], source: str, *, end: bool = True) -> str:
        """A chain in the format this model writes."""
        return render_chain(chain, source, self.chain_format, end=end)

    def default_mode(self) -> str:
        return "direct" if self.trained_mode == "direct" else "apply"

    def check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if self.trained_mode == "direct" and mode != "direct":
            raise ValueError(f"{self.name} was trained with --mode direct (it writes text, no chain of edits): use mode 'direct'")
        if self.trained_mode == "coe" and mode == "direct":
            raise ValueError(f"{self.name} was trained on chains of edits (--mode coe): use mode 'apply' or 'generate'")
        if mode != "direct" and not self.has_edit_tokens:
            raise ValueError(f"{self.name} has no edit tokens: it was not trained with `secondthoughts train`")

    # ------------------------------------------------------------ public API

    def realign(
        self,
        context: str,
        source: str,
        *,
        mode: Mode | None = None,
        constrained: bool = True,
        prefix: ChainLike | None = None,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = BEST_OF_TEMPERATURE,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        prompt_lookup_num_tokens: int | None = None,
        draft: Draft = "auto",
        best_of: int = 1,
        rerank: Reranker | None = None,
        no_repeat: int = NO_REPEAT,
    ) -> RealignResult:
        """Re-align one text; settings as :meth:`realign_many`. ``prefix``: the first edits,
        forced (compact, readable or ``Edit`` records); ``EditError`` if it does not apply."""
        item = {"context": context, "source": source, "prefix": prefix}
        return self.realign_many(
            [item], batch_size=1, mode=mode, constrained=constrained, num_beams=num_beams, do_sample=do_sample,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
            prompt_lookup_num_tokens=prompt_lookup_num_tokens, draft=draft, best_of=best_of, rerank=rerank, no_repeat=no_repeat,
        )[0]  # fmt: skip

    def realign_many(
        self,
        items: Iterable[Any],
        batch_size: int = 8,
        *,
        mode: Mode | None = None,
        constrained: bool = True,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = BEST_OF_TEMPERATURE,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        prompt_lookup_num_tokens: int | None = None,
        draft: Draft = "auto",
        progress: bool = False,
        best_of: int = 1,
        rerank: Reranker | None = None,
        no_repeat: int = NO_REPEAT,
    ) -> list[RealignResult]:
        """Re-align many texts in left-padded batches (sorted by length; results in input order).

        items: (context, source) pairs, mappings with ``context``, ``source`` and optional
            ``prefix``, or objects with ``context`` and ``source`` (``data.Example``).
        mode: "apply", "generate" or "direct"; None: the run's own ("direct" for direct runs,
            else "apply").
        constrained: only chains that parse and apply (apply and generate modes).
        num_beams, do_sample, temperature, top_p: search; sampling applies only top_p (no top_k).
        max_new_tokens: None: enough for rewriting every source token (see ``_budget``).
        seed: seeds torch once before the first batch (sampled results then depend on batching).
        prompt_lookup_num_tokens: draft this many tokens by copying from the prompt (transformers'
            prompt lookup); batch size 1 and no beams, as transformers requires.
        draft: "chain": greedy decoding that drafts from the source (spans, positions; in generate
            mode the target by prompt lookup) and verifies drafts in one forward pass, one text
            at a time; same output as plain greedy. "auto": "chain" for greedy apply mode at
            batch size 1 (where it is faster), else "none".
        best_of, rerank: decode the greedy chain and sample ``best_of`` more per text (a text's
            greedy chain and samples share one batch and its prompt's prefill; ``batch_size``
            counts rows, at least one text a batch) and return the one whose text
            ``rerank(contexts, texts)`` scores highest (``rerank(contexts, texts, sources)`` where
            it has ``takes_sources``), preferring texts that change the source; ``best_of=1`` is
            plain decoding. See :func:`choose_best`.
        no_repeat: n >= 2: the text a constrained chain writes never repeats one of its own
            token n-grams (``repeats.RepeatGuard``; unconstrained and direct decoding are not
            guarded); 0: off.
        """
        if best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {best_of}")
        mode = mode or self.default_mode()  # type: ignore[assignment]
        self.check_mode(mode)  # type: ignore[arg-type]
        if batch_size < 1 or num_beams < 1:
            raise ValueError("batch_size and num_beams must be >= 1")
        if no_repeat < 0 or no_repeat == 1:
            raise ValueError(f"no_repeat must be 0 (off) or an n-gram size >= 2, got {no_repeat}")
        if best_of > 1:
            if rerank is None:
                raise ValueError("best_of > 1 needs a reranker (rerank=): a callable scoring (contexts, texts)")
            if num_beams > 1 or prompt_lookup_num_tokens or draft == "chain":
                raise ValueError("best_of samples chains: no beams, prompt lookup or chain drafting")
        if prompt_lookup_num_tokens:
            if num_beams > 1:
                raise ValueError("prompt lookup drafting works with num_beams=1 only")
            batch_size = 1
        jobs = [_job(x, i) for i, x in enumerate(items)]
        if mode == "direct" and any(j.prefix or j.closed for j in jobs):
            raise ValueError("a prefix of edits needs a chain-of-edits mode (apply or generate), not direct")
        if seed is not None:
            torch.manual_seed(seed)
        if best_of > 1:
            return self._best_of(jobs, batch_size, best_of, rerank, mode, constrained, temperature, top_p, max_new_tokens, no_repeat, progress)  # type: ignore[arg-type]
        # One text runs alone whatever the batch size asked (realign()).
        draft = self._draft_choice(draft, mode, min(batch_size, max(1, len(jobs))), num_beams, do_sample, prompt_lookup_num_tokens)  # type: ignore[arg-type]
        search: dict[str, Any] = {"num_beams": num_beams, "do_sample": do_sample}
        if do_sample:  # only top_p: transformers' default top_k=50 would silently apply too
            search.update(temperature=temperature, top_p=top_p, top_k=0)
        if prompt_lookup_num_tokens:
            search["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
        out = self._decode(jobs, 1 if draft == "chain" else batch_size, mode, constrained, max_new_tokens, search, draft, no_repeat, progress)  # type: ignore[arg-type]
        return [rows[0] for rows in out]

    # ------------------------------------------------------------ internals

    def _decode(
        self, jobs: list[_Job], batch_size: int, mode: str, constrained: bool, max_new_tokens: int | None, search: dict[str, Any],
        draft: str, no_repeat: int, progress: bool, last: Sequence[Any] = (),
    ) -> list[list[RealignResult]]:  # fmt: skip
        """Each job's results (``search["num_return_sequences"]`` of them, 1 if unset), in job order;
        batches of ``batch_size`` jobs, longest prompts first; ``last`` as :meth:`_run_batch`."""
        t0 = time.perf_counter()
        prompts = [self._prompt(j) for j in jobs]
        prompt_s = (time.perf_counter() - t0) / max(len(jobs), 1)
        order = sorted(range(len(jobs)), key=lambda i: -len(prompts[i]))
        repeats = search.get("num_return_sequences", 1)
        results: list[list[RealignResult]] = [[] for _ in jobs]
        with tqdm(total=len(jobs), disable=not progress, desc=f"realign ({mode})", dynamic_ncols=True) as bar:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                out = self._run_batch([jobs[i] for i in idx], [prompts[i] for i in idx], mode, constrained, max_new_tokens, search, prompt_s, draft, no_repeat, last)
                for k, i in enumerate(idx):
                    results[i] = out[k * repeats : (k + 1) * repeats]
                bar.update(len(idx))
        return results

    def _best_of(
        self, jobs: list[_Job], batch_size: int, best_of: int, rerank: Reranker, mode: str, constrained: bool, temperature: float,
        top_p: float, max_new_tokens: int | None, no_repeat: int, progress: bool,
    ) -> list[RealignResult]:  # fmt: skip
        """The greedy chain and ``best_of`` sampled chains per job, and the one :func:`choose_best`
        picks by ``rerank``. A job's greedy row and samples share one batch and its prompt's prefill
        (``decoding.GreedyRows``); jobs go ``batch_size // (best_of + 1)`` (at least one) to a batch.
        The greedy chain is a candidate so that a reranker only moves away from plain decoding when
        it prefers another text (sampled chains at temperature 0.7 almost never reproduce it)."""
        group = best_of + 1
        search = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "num_return_sequences": group}
        decoded = self._decode(jobs, max(1, batch_size // group), mode, constrained, max_new_tokens, search, "none", no_repeat, progress, [decoding.GreedyRows(group)])
        out = []
        # The rerankers' passes take a quarter of the time or more: a bar of their own, not a stalled one at 100%.
        for cands in tqdm(decoded, disable=not progress, desc=f"choose (best of {best_of})", dynamic_ncols=True):
            t0 = time.perf_counter()
            best = choose_best(cands, rerank)
            # Its time is all of it: its batch (shared with the batch's other jobs) and the reranking.
            best.timings = {**best.timings, "total_s": best.timings.get("total_s", 0.0) + time.perf_counter() - t0,
                            "new_tokens": sum(c.timings.get("new_tokens", 0) for c in cands)}  # fmt: skip
            out.append(best)
        return out

    @staticmethod
    def _draft_choice(draft: str, mode: str, batch_size: int, num_beams: int, do_sample: bool, lookup: int | None) -> str:
        """"chain" or "none"; ``ValueError`` for chain drafting where it cannot run."""
        if draft not in DRAFTS:
            raise ValueError(f"draft must be one of {DRAFTS}, got {draft!r}")
        if draft == "auto":
            plain = batch_size == 1 and num_beams == 1 and not do_sample and not lookup
            return "chain" if mode == "apply" and plain else "none"
        if draft == "chain":
            if mode == "direct":
                raise ValueError("chain drafting needs a chain: mode 'apply' or 'generate', not 'direct'")
            if num_beams > 1 or do_sample or lookup:
                raise ValueError("chain drafting is greedy: no beams, sampling or prompt lookup")
        return draft

    def _prompt(self, job: _Job) -> list[int]:
        head = self._render(job.prefix, job.source, end=job.closed) if job.prefix or job.closed else ""
        return decoding.prompt_ids(self.tokenizer, job.context, job.source, self.max_length, head)

    def _budget(self, jobs: Sequence[_Job], mode: str) -> int:
        return decoding.new_token_budget(self.tokenizer, [j.source for j in jobs], mode)

    def _run_batch(
        self,
        jobs: list[_Job],
        prompts: list[list[int]],
        mode: str,
        constrained: bool,
        max_new_tokens: int | None,
        search: dict[str, Any],
        prompt_s: float,
        draft: str = "none",
        no_repeat: int = NO_REPEAT,
        last: Sequence[Any] = (),
    ) -> list[RealignResult]:
        """Results for each job's ``search["num_return_sequences"]`` rows (1 if unset), job by job;
        ``last``: logits processors after the constraint and the repeat guard."""
        t0 = time.perf_counter()
        tok = self.tokenizer
        pad = tok.pad_token_id
        ids, mask = decoding.left_padded(prompts, pad)
        width = ids.shape[1]
        budget = max_new_tokens or self._budget(jobs, mode)
        voc = self.vocab if mode != "direct" else None
        stops = decoding.stop_ids(tok, voc.eoc if voc else None, mode)
        processor = None
        if constrained and voc is not None:
            starts = [start_state(j.prefix[-1].end, j.closed, j.prefix[-1].op) if j.prefix else start_state(0, j.closed) for j in jobs]
            processor = ChainConstraint(
                voc, [j.source for j in jobs], width, starts=starts, then="stop" if mode == "apply" else "target", chain_format=self.chain_format
            )
        guards = [processor] if processor else []
        if no_repeat and processor is not None:
            guards.append(RepeatGuard(voc.new, (m for m in voc.specials if m != voc.new), width, no_repeat))
        guards += last
        repeats = search.get("num_return_sequences", 1)
        forwards: int | None = None
        if mode == "apply" and all(j.closed for j in jobs):
            new = [[] for _ in range(len(jobs) * repeats)]  # the prefixes are whole chains: nothing to generate
        elif draft == "chain":
            gen, forwards = self._drafted(jobs[0], prompts[0], mode, budget, stops, guards)
            new = [self._cut(gen, mode)]
        else:
            training = self.model.training  # a caller's model (from_model) keeps its mode
            self.model.eval()
            try:
                out = decoding.generate(self.model, ids, mask, budget, stops, pad, guards, **search)
            finally:
                self.model.train(training)
            new = [self._cut(row, mode) for row in out]
        generate_s = time.perf_counter() - t0
        results = [self._result(jobs[k // repeats], k // repeats, g, mode, processor, budget) for k, g in enumerate(new)]
        total_s = time.perf_counter() - t0 + prompt_s
        for r, g in zip(results, new):
            r.timings = {"prompt_s": prompt_s, "generate_s": generate_s, "total_s": total_s, "batch_size": len(jobs), "new_tokens": len(g)}
            if forwards is not None:  # drafting: tokens per forward pass is its gain
                r.timings["forwards"] = forwards
        return results

    def _drafted(
        self, job: _Job, prompt: list[int], mode: str, budget: int, stops: list[int], processors: list[Any]
    ) -> tuple[list[int], int]:
        """Greedy ids for one job with chain drafting, and the forward passes it took."""
        start = start_state(job.prefix[-1].end, job.closed, job.prefix[-1].op) if job.prefix else start_state(0, job.closed)
        # A target mostly copies the source: prompt lookup drafts it (generate mode).
        drafter = ChainDrafter(
            self.vocab, self.tokenizer, job.source, start,
            text_lookup=TEXT_LOOKUP, target_lookup=PromptLookup(10) if mode == "generate" else None, chain_format=self.chain_format,
        )  # fmt: skip
        training = self.model.training
        self.model.eval()
        try:
            gen, stats = greedy_generate(self.model, prompt, budget, stops=stops, processors=processors, drafter=drafter)
        finally:
            self.model.train(training)
        return gen, stats.forwards

    def _cut(self, gen: list[int], mode: str) -> list[int]:
        """Generated ids up to the end: ``<|eoc|>`` kept in apply mode, EOS / padding dropped."""
        tok = self.tokenizer
        ends = {tok.eos_token_id, tok.pad_token_id}
        eoc = self.vocab.eoc if mode == "apply" else None
        for k, t in enumerate(gen):
            if t == eoc:
                return gen[: k + 1]
            if t in ends:
                return gen[:k]
        return gen

    def _result(self, job: _Job, item: int, gen: list[int], mode: str, processor: ChainConstraint | None, budget: int) -> RealignResult:
        res = RealignResult(job.context, job.source, mode, prefix_edits=len(job.prefix))
        if mode == "direct":
            res.text = self.tokenizer.decode(gen, skip_special_tokens=True)
            res.chain = infer_text_edits(job.source, res.text)
            res.compact, res.readable = render_compact(res.chain, job.source), render_readable(res.chain, job.source)
            return res
        head = self._render(job.prefix, job.source, end=job.closed)
        chain_text, target = split_completion(head + self.vocab.decode(gen))
        closed = chain_text.endswith(EOC)
        if not closed and processor is not None:
            # Cut by max_new_tokens: keep the edits that were complete.
            state = processor.state(item, gen)
            chain_text = head + self.vocab.decode(gen[: state.closable_at]) + EOC
            res.truncated = True
        try:
            if not closed and processor is None:
                # fewer tokens than the budget: the model ended the text itself (EOS) before closing the chain
                raise EditError(f"no {EOC} within {len(gen)} new tokens" + (" (the model wrote EOS)" if len(gen) < budget else ""))
            res.chain = parse_chain(chain_text, job.source, self.chain_format)
            res.text = realigned_text(job.source, res.chain)
            res.compact = self._render(res.chain, job.source)
            res.readable = render_readable(res.chain, job.source)
        except EditError as e:
            res.valid, res.error, res.chain, res.text, res.compact = False, str(e), [], job.source, chain_text
        if mode == "generate" and closed:
            res.generated_target = target
            res.disagrees = target != res.text if res.valid else None
        return res
