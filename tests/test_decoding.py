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
    Realigner.realign_many's (best-of scorers are loaded apart)."""
    import inspect

    from secondthoughts.decoding import DecodeSettings
    from secondthoughts.realign import Realigner

    params = inspect.signature(Realigner.realign_many).parameters
    for name, value in DecodeSettings().realign_kwargs().items():
        assert params[name].default == value, name
    assert params["best_of"].default == DecodeSettings().best_of
