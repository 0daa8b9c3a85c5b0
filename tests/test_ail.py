"""The AIL term's rows and hinge (secondthoughts.ail), without a model."""

import pytest
import torch

from secondthoughts.ail import ail_rows, ail_terms, expert_chain, prompt_ail_rows
from secondthoughts.data import Example
from secondthoughts.edits import apply_edits, tokenize

COSTS = (1.0, 1.0, 2.0)


def test_the_expert_chain_turns_source_into_target_and_merges_as_learned() -> None:
    src, tgt = "Tom keeps the ladder and hides it.", "Tom returns the ladder to his neighbour."
    plain = expert_chain(src, tgt, COSTS, None)
    merged = expert_chain(src, tgt, COSTS, 3)
    for chain in (plain, merged):
        assert "".join(apply_edits(tokenize(src), chain)) == tgt
    assert len(merged) < len(plain)  # " the ladder" between the edits is merged over


def test_reverse_negatives_add_a_row_per_prompt_toward_the_unaligned_text() -> None:
    exs = [Example("ctx a", "Ann lies.", "Ann tells the truth.", "a"), Example("ctx b", "Bo hits.", "Bo helps.", "b")]
    prompt_of = lambda ex: [len(ex.context), len(ex.source)]
    chain_ids = lambda chain, source: [len(chain), len(source)]
    prompts, comps, sources = ail_rows(exs, [[1], [2]], prompt_of, chain_ids, COSTS, None, "sample")
    assert prompts == [[1], [2]] and sources == ["Ann lies.", "Bo hits."] and len(comps) == 2
    prompts, comps, sources = ail_rows(exs, [[1], [2]], prompt_of, chain_ids, COSTS, None, "both")
    # The reverse rows edit the target back into the source, after a prompt holding the target.
    assert sources == ["Ann lies.", "Bo hits.", "Ann tells the truth.", "Bo helps."]
    assert prompts[2:] == [[5, len("Ann tells the truth.")], [5, len("Bo helps.")]]
    ail = (prompts, comps, sources)
    assert prompt_ail_rows(ail, 1, 2) == [1, 3]
    assert prompt_ail_rows(ail_rows(exs, [[1], [2]], prompt_of, chain_ids, COSTS, None, "sample"), 1, 2) == [1]
    assert prompt_ail_rows(([], [], []), 0, 2) == []


@pytest.mark.parametrize("negative", ["sample", "reverse", "both"])
def test_the_hinge_compares_the_expert_with_the_chosen_negatives(negative: str) -> None:
    # Rows: k = 2 samples, the expert, the reverse chain; mean log-probs -2, -1 | -0.5 | -3.
    logps = torch.tensor([[-2.0, -2.0], [-1.0, -1.0], [-0.5, -0.5], [-3.0, -3.0]])
    mask = torch.ones_like(logps)
    loss, gap, expert = ail_terms(logps, mask, k=2, lowest=0, negative=negative, margin=2.0)
    gaps = {"sample": [1.5], "reverse": [2.5], "both": [1.5, 2.5]}[negative]
    assert float(expert) == pytest.approx(-0.5)
    assert float(gap) == pytest.approx(sum(gaps) / len(gaps))
    assert float(loss) == pytest.approx(sum(max(0.0, 2.0 - g) for g in gaps) / len(gaps))
