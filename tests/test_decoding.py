"""The one decoding path of re-alignment and RL rollouts (secondthoughts.decoding): the context cut,
forced edits after the prompt, the budget, left padding, stop tokens and a run's chain format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from secondthoughts import decoding, models
from secondthoughts.sequences import encode_prompt


@pytest.fixture
def tok(tiny_tok: Any, tiny_lm: Any) -> Any:
    models.add_edit_tokens(tiny_lm, tiny_tok)
    return tiny_tok


def test_the_context_is_cut_from_the_left_to_fit_max_length(tok: Any) -> None:
    source = "Tom hits his brother."
    context = " ".join(["It is wrong to hit people."] * 40)
    bare = len(encode_prompt(tok, "", source))
    assert decoding.context_limit(tok, source, None) is None
    assert decoding.context_limit(tok, source, 128) == 128 - 2 * bare - 16
    assert decoding.context_limit(tok, source, 10) == 0  # never negative
    full = decoding.prompt_ids(tok, context, source)
    cut = decoding.prompt_ids(tok, context, source, 128)
    assert full == encode_prompt(tok, context, source)
    assert cut == encode_prompt(tok, context, source, 128 - 2 * bare - 16) and len(cut) < len(full)
    assert cut[-bare + 1 :] == full[-bare + 1 :]  # the source and separator are whole


def test_forced_edits_follow_the_prompt_tokenized_on_their_own(tok: Any) -> None:
    head = "<|rep|><|old|> hits<|new|> talks to"
    ids = decoding.prompt_ids(tok, "Be kind.", "Tom hits his brother.", None, head)
    plain = decoding.prompt_ids(tok, "Be kind.", "Tom hits his brother.")
    assert ids == plain + tok(head, add_special_tokens=False)["input_ids"]


def test_budget_rewrites_every_source_token(tiny_tok: Any) -> None:
    sources = ["Tom hits his brother.", "Rose hopes her friend forgets the money she owes."]
    n = max(len(tiny_tok(s, add_special_tokens=False)["input_ids"]) for s in sources)
    assert decoding.new_token_budget(tiny_tok, sources) == 3 * n + 48
    assert decoding.new_token_budget(tiny_tok, sources, "generate") == 5 * n + 64
    assert decoding.new_token_budget(tiny_tok, sources, "direct") == 2 * n + 32


def test_left_padding_and_stops(tiny_tok: Any) -> None:
    ids, mask = decoding.left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    eos = tiny_tok.eos_token_id
    assert decoding.stop_ids(tiny_tok, 99, "apply") == [eos, 99]
    assert decoding.stop_ids(tiny_tok, 99, "generate") == [eos]


def test_a_runs_chain_format(tmp_path: Path) -> None:
    assert decoding.chain_format(None) == decoding.DEFAULT_CHAIN_FORMAT == "anchored"
    assert decoding.chain_format({"mode": "coe"}) == "positional"  # saved before chains were anchored
    assert decoding.chain_format({"chain_format": "inline"}) == "inline"
    (tmp_path / "model").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"train": {"chain_format": "inline", "max_length": 64}}))
    assert decoding.run_info(tmp_path / "model") == {"chain_format": "inline", "max_length": 64}
    assert decoding.run_info(tmp_path / "other" / "model") is None


def test_decode_settings_are_realign_manys_settings():
    """realign / evaluate / serve flags come from DecodeSettings: the same names and defaults as
    Realigner.realign_many's (best-of scorers are loaded apart). The commands decode best-of-16 by
    default; the Python API is greedy unless asked."""
    import inspect

    from secondthoughts.decoding import DecodeSettings
    from secondthoughts.realign import Realigner

    params = inspect.signature(Realigner.realign_many).parameters
    for name, value in DecodeSettings().realign_kwargs().items():
        assert params[name].default == value, name
    assert DecodeSettings().best_of == decoding.BEST_OF == 16 and DecodeSettings().rerank == ["likelihood"]
    assert params["best_of"].default == 1 and params["rerank"].default is None
    assert DecodeSettings().temperature == params["temperature"].default == decoding.BEST_OF_TEMPERATURE


def test_a_prompts_samples_share_its_prefill_and_a_greedy_row_runs_beside_them(tok: Any, tiny_lm: Any) -> None:
    import torch

    pad = tok.pad_token_id
    # Prompts of very different lengths: the shorter is left-padded, its positions must start at its first token.
    prompts = [tok("Tom hits his brother when he is angry and tired after a long day at work.")["input_ids"], tok("Be kind.")["input_ids"]]
    assert len(prompts[0]) > 2 * len(prompts[1])
    ids, mask = decoding.left_padded(prompts, pad)
    tiny_lm.eval()
    class Scores:  # what each step's logits were, to compare the shared prefill's with transformers' own
        def __init__(self) -> None:
            self.steps: list[torch.Tensor] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.steps.append(scores.clone())
            return scores

    shared_scores, own_scores = Scores(), Scores()
    greedy = decoding.generate(tiny_lm, ids, mask, 8, [], pad, [own_scores])
    assert decoding.generate(tiny_lm, ids, mask, 8, [], pad, [shared_scores], num_return_sequences=3) == [g for g in greedy for _ in range(3)]
    for shared, own in zip(shared_scores.steps, own_scores.steps, strict=True):
        assert torch.allclose(shared, own.repeat_interleave(3, 0), atol=1e-4)
    sample = {"do_sample": True, "temperature": 5.0, "top_k": 0}
    torch.manual_seed(0)
    shared = decoding.generate(tiny_lm, ids, mask, 8, [], pad, **sample, num_return_sequences=3)
    torch.manual_seed(0)  # transformers' own num_return_sequences, which runs the prompt once per row: the same draws
    with torch.inference_mode():
        own = tiny_lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, pad_token_id=pad, num_return_sequences=3, **sample)
    assert shared == own[:, ids.shape[1] :].tolist()
    torch.manual_seed(0)
    mixed = decoding.generate(tiny_lm, ids, mask, 8, [], pad, [decoding.GreedyRows(3)], **sample, num_return_sequences=3)
    assert mixed[0] == greedy[0] and mixed[3] == greedy[1]  # each prompt's first row is its greedy decode
    assert len({tuple(r) for r in mixed}) > 2  # the others are samples at temperature 5
    with pytest.raises(ValueError, match="every must be >= 1"):
        decoding.GreedyRows(0)
