"""Blocks against hand-written pre-/post-norm formulas; causality of the Decoder stack."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmkit.core import Decoder, Encoder, PostNormBlock, PreNormBlock

DIM, HEADS, T = 16, 2, 6


def _ln(norm, x):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _mlp(mlp, x):
    return F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)


def _randomise(module):
    # Non-trivial norm affine parameters, so a misplaced norm cannot go unnoticed.
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


@pytest.mark.parametrize("cross", [False, True])
def test_post_norm_block_matches_hand_written(naive, cross):
    blk = _randomise(PostNormBlock(DIM, HEADS, cross_attention=cross))
    x, ctx = torch.randn(2, T, DIM), torch.randn(2, 4, DIM)
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    h = _ln(blk.norm1, x + naive(blk.attn, x, mask=tril))
    if cross:
        h = _ln(blk.norm_cross, h + naive(blk.cross_attn, h, ctx))
    expected = _ln(blk.norm2, h + _mlp(blk.mlp, h))
    out = blk(x, context=ctx if cross else None, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
def test_pre_norm_block_matches_hand_written(naive, cross):
    blk = _randomise(PreNormBlock(DIM, HEADS, cross_attention=cross))
    x, ctx = torch.randn(2, T, DIM), torch.randn(2, 4, DIM)
    h = x + naive(blk.attn, _ln(blk.norm1, x))
    if cross:
        h = h + naive(blk.cross_attn, _ln(blk.norm_cross, h), ctx)
    expected = h + _mlp(blk.mlp, _ln(blk.norm2, h))
    torch.testing.assert_close(blk(x, context=ctx if cross else None), expected, atol=1e-5, rtol=1e-5)


def _jacobian_norms(stack, x):
    """||d out[0, t] / d x[0, s]|| for all (t, s): a (T, T) matrix."""
    x = x.clone().requires_grad_(True)
    out = stack(x)
    # A random read-out: plain .sum() after a final LayerNorm is constant, so its gradient is 0.
    probe = torch.randn(out.shape[-1])
    rows = []
    for t in range(x.shape[1]):
        (g,) = torch.autograd.grad(out[0, t] @ probe, x, retain_graph=True)
        rows.append(g[0].norm(dim=-1))
    return torch.stack(rows)


def test_decoder_is_causal_in_gradients():
    torch.manual_seed(0)
    dec = Decoder(DIM, 2, HEADS).eval()
    jac = _jacobian_norms(dec, torch.randn(1, T, DIM))
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    assert jac[future].abs().max() == 0  # exactly zero, not merely small
    assert (jac[~future] > 0).all()


def test_encoder_is_not_causal():
    # Guards the test above: the same probe sees the future when attention is bidirectional.
    torch.manual_seed(0)
    jac = _jacobian_norms(Encoder(DIM, 2, HEADS).eval(), torch.randn(1, T, DIM))
    assert (jac > 0).all()


def test_drop_path_rate_increases_linearly():
    dec = Decoder(DIM, 4, HEADS, drop_path_rate=0.3)
    assert [b.drop_path.p for b in dec.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("block", [PreNormBlock, PostNormBlock])
@pytest.mark.parametrize("keep", [1, 3])
def test_encoder_keep_computes_only_the_leading_positions_exactly(block, keep):
    torch.manual_seed(0)
    enc = Encoder(32, depth=3, num_heads=4, block=block, init_values=0.5).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # padding keys in the second row
    with torch.no_grad():
        for m in (None, mask, mask.expand(2, 1, 7, 7)):
            full, kept = enc(x, mask=m), enc(x, mask=m, keep=keep)
            assert kept.shape == (2, keep, 32)
            torch.testing.assert_close(kept, full[:, :keep], rtol=1e-6, atol=1e-6)
    # Gradients reach the inputs of every position through the last block's keys/values.
    x.requires_grad_(True)
    (enc.train()(x, keep=keep) * torch.randn(2, keep, 32)).sum().backward()  # not a plain sum: LayerNorm
    assert (x.grad.abs().sum(-1) > 0).all()


def test_keep_is_refused_where_it_would_change_the_result():
    dec = Decoder(16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="bidirectional self-attention"):
        dec(torch.randn(1, 4, 16), keep=1)
