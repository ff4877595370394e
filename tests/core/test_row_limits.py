"""Per-row maximum lengths in the decoding loop (a translation's limit follows its own source):
a row of a batch stops at its own limit and decodes exactly as it would alone."""
from __future__ import annotations

import pytest
import torch

from mmkit.core import BeamSearch, Greedy, generate

PROMPT = torch.tensor([[3, 14, 15], [9, 2, 6], [4, 4, 1]])
LIMITS = torch.tensor([2, 7, 4])


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(3, early_stopping=False),
                                      BeamSearch(3, 0.7, early_stopping="never")], ids=["greedy", "beam", "never"])
def test_each_row_stops_at_its_own_limit_as_it_would_alone(tiny_lm, strategy):
    out = generate(tiny_lm, PROMPT, LIMITS, strategy, pad_id=0)
    assert (out.lengths - PROMPT.shape[1]).tolist() == LIMITS.tolist()  # no EOS: every row runs to its limit
    for row, limit in enumerate(LIMITS.tolist()):
        alone = generate(tiny_lm, PROMPT[row : row + 1], limit, strategy, pad_id=0)
        assert torch.equal(out.sequences[row], alone.sequences[0])
    uniform = generate(tiny_lm, PROMPT, int(LIMITS.max()), strategy, pad_id=0)
    assert not torch.equal(out.sequences[0], uniform.sequences[0])  # the limit changed the short row


def test_per_row_limits_need_the_ranked_beam_search(tiny_lm):
    with pytest.raises(ValueError, match="per-row max_new_tokens"):
        generate(tiny_lm, PROMPT, LIMITS, BeamSearch(3))
