"""Positional encodings against the paper formulas and timm's resampling."""
from __future__ import annotations

import math

import pytest
import torch

from mmkit.core import LearnedPositions, RotaryEmbedding, resample_positions, sinusoidal_positions
from mmkit.core import sinusoidal_positions_concat


def test_sinusoidal_matches_paper_formula():
    length, dim = 50, 16
    table = sinusoidal_positions(length, dim)
    assert table.shape == (length, dim)
    for pos in (0, 1, 7, 49):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_concat_matches_whisper_formula():
    # openai/whisper `sinusoids`: timescales geometric from 1 to 10000 over dim/2 channels.
    length, dim = 20, 8
    table = sinusoidal_positions_concat(length, dim)
    half = dim // 2
    for pos in (0, 3, 19):
        for i in range(half):
            angle = pos * math.exp(-math.log(10000) / (half - 1) * i)
            assert table[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, half + i].item() == pytest.approx(math.cos(angle), abs=1e-5)


def _rotate(rope: RotaryEmbedding, v: torch.Tensor, pos: int) -> torch.Tensor:
    out, _ = rope(v.view(1, 1, 1, -1), v.view(1, 1, 1, -1), offset=pos)
    return out.view(-1)


def test_rotary_dot_product_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(8), torch.randn(8)
    for m, n in [(3, 1), (10, 2), (5, 5)]:
        ref = _rotate(rope, q, m) @ _rotate(rope, k, n)
        for shift in (1, 7, 40):
            assert (_rotate(rope, q, m + shift) @ _rotate(rope, k, n + shift)).item() == pytest.approx(
                ref.item(), abs=1e-4)
    # ... and does depend on it (an identity "rotation" would pass the loop above).
    assert abs((_rotate(rope, q, 0) @ _rotate(rope, k, 0)) - (_rotate(rope, q, 3) @ _rotate(rope, k, 0))) > 1e-3
    # Rotations preserve norms.
    assert _rotate(rope, q, 17).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rotary_offset_equals_slicing_a_longer_sequence():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    full_q, full_k = rope(q, k)
    part_q, part_k = rope(q[:, :, 6:], k[:, :, 6:], offset=6)
    torch.testing.assert_close(part_q, full_q[:, :, 6:])
    torch.testing.assert_close(part_k, full_k[:, :, 6:])


@pytest.mark.parametrize("prefix,old,new", [(1, (4, 4), (6, 5)), (0, (3, 5), (7, 7)), (1, (8, 8), (4, 4))])
def test_resample_positions_matches_timm(prefix, old, new):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1, prefix + old[0] * old[1], 12)
    ours = resample_positions(pos, new, old, prefix)
    ref = resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=prefix)
    assert ours.shape == (1, prefix + new[0] * new[1], 12)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_learned_positions_offset_and_overflow():
    pos = LearnedPositions(10, 4)
    torch.testing.assert_close(pos(3, offset=5), pos.weight[5:8])
    with pytest.raises(ValueError, match="max_len 10"):
        pos(4, offset=7)
