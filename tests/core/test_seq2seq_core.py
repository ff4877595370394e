"""Core pieces the encoder-decoders need: an additive float bias (T5) in the one Attention,
head widths independent of dim, unscaled scores, Marian's [sin | cos] table, and the ranked
(GNMT / transformers) beam search on a hand-made model."""
from __future__ import annotations

import math

import pytest
import torch

from mmkit.core import Attention, BeamSearch, generate, sinusoidal_positions, sinusoidal_positions_halves


def _naive(attn: Attention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    w = ((q @ k.transpose(-2, -1)) * attn.scale + bias).softmax(-1)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, T, -1))


def test_float_bias_head_dim_and_scale_match_naive_attention():
    torch.manual_seed(0)
    attn = Attention(30, 3, qkv_bias=False, proj_bias=False, head_dim=8, scale=1.0).eval()
    assert attn.qkv.weight.shape == (72, 30) and attn.proj.weight.shape == (30, 24)
    x, bias = torch.randn(2, 5, 30), torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(attn(x, mask=bias), _naive(attn, x, bias), atol=1e-5, rtol=1e-5)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    expected = _naive(attn, x, bias.masked_fill(~causal, float("-inf")))
    torch.testing.assert_close(attn(x, mask=bias, is_causal=True), expected, atol=1e-5, rtol=1e-5)
    weights = attn.attention_weights(x, mask=bias)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_marian_halves_layout_holds_the_papers_frequencies():
    paper, halves = sinusoidal_positions(7, 8), sinusoidal_positions_halves(7, 8)
    torch.testing.assert_close(halves[:, :4], paper[:, 0::2])
    torch.testing.assert_close(halves[:, 4:], paper[:, 1::2])
    assert halves[3, 1] == pytest.approx(math.sin(3 / 10000 ** (2 / 8)), abs=1e-6)


class _Table(torch.nn.Module):
    """Next-token distribution by sequence length only: [start] -> A 0.6 / B 0.4; after A:
    EOS 0.5, C 0.5; after B: EOS 0.9. Greedy-first beams finish short; lp decides."""

    def forward(self, tokens, context=None, cache=None):
        probs = torch.full((tokens.shape[0], 5), 1e-6)
        for r, row in enumerate(tokens.tolist()):
            last = row[-1]
            if len(row) == 1:
                probs[r, 1], probs[r, 2] = 0.6, 0.4
            elif last == 1:
                probs[r, 0], probs[r, 3] = 0.5, 0.5
            elif last == 2:
                probs[r, 0], probs[r, 4] = 0.9, 0.1
            else:
                probs[r, 0] = 1.0
        return probs.log()[:, None, :].expand(-1, tokens.shape[1], -1)


@pytest.mark.parametrize("form,alpha", [("length", 1.0), ("gnmt", 0.6), ("length", 0.0)])
def test_ranked_beam_search_scores_with_the_length_penalty(form, alpha):
    out = generate(_Table(), torch.tensor([[4]]), 5, BeamSearch(2, alpha, early_stopping="never", penalty_form=form),
                   eos_id=0, use_cache=False)
    lp = (lambda n: ((5 + n) / 6) ** alpha) if form == "gnmt" else (lambda n: n**alpha)
    candidates = {(4, 2, 0): math.log(0.4 * 0.9) / lp(2), (4, 1, 0): math.log(0.6 * 0.5) / lp(2),
                  (4, 1, 3, 0): math.log(0.6 * 0.5) / lp(3)}
    best = max(candidates, key=candidates.get)
    assert tuple(out.sequences[0].tolist()) == best
    assert out.scores[0].item() == pytest.approx(candidates[best], rel=1e-4)


def test_beam_search_options_are_checked():
    with pytest.raises(ValueError, match="early_stopping"):
        BeamSearch(2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="penalty_form"):
        BeamSearch(2, early_stopping=True, penalty_form="google")
