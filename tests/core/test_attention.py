"""Attention against a naive per-head softmax(QKᵀ·scale)V, masks, and a hand-checked example."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmkit.core import Attention, AttentionCache, Decoder, RotaryEmbedding, attention_maps, causal_mask, key_padding_mask

B, T, DIM, HEADS = 2, 7, 24, 3


def _random_mask(b: int, t: int, s: int) -> torch.Tensor:
    mask = torch.rand(b, 1, t, s) > 0.5
    mask[..., 0] = True  # every query keeps at least one key (an all-False row is NaN by definition)
    return mask


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(B, T, DIM)


def test_self_attention_matches_naive_without_mask(naive, x):
    attn = Attention(DIM, HEADS).eval()
    torch.testing.assert_close(attn(x), naive(attn, x), atol=1e-5, rtol=1e-5)


def test_self_attention_matches_naive_with_random_boolean_mask(naive, x):
    attn = Attention(DIM, HEADS).eval()
    mask = _random_mask(B, T, T)
    out = attn(x, mask=mask)
    torch.testing.assert_close(out, naive(attn, x, mask=mask), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, attn(x), atol=1e-3)  # the mask really changed something


def test_causal_matches_naive_lower_triangular_mask(naive, x):
    attn = Attention(DIM, HEADS).eval()
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    torch.testing.assert_close(attn(x, is_causal=True), naive(attn, x, mask=tril), atol=1e-5, rtol=1e-5)


def test_causal_combined_with_padding_mask(naive, x):
    attn = Attention(DIM, HEADS).eval()
    valid = torch.tensor([[True] * T, [True] * 4 + [False] * (T - 4)])
    pad = key_padding_mask(valid)
    assert pad.shape == (B, 1, 1, T)
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    out = attn(x, mask=pad, is_causal=True)
    torch.testing.assert_close(out, naive(attn, x, mask=pad & tril), atol=1e-5, rtol=1e-5)


def test_key_padding_ignores_padded_keys(naive, x):
    attn = Attention(DIM, HEADS).eval()
    valid = torch.tensor([[True] * T, [True] * 3 + [False] * (T - 3)])
    out = attn(x, mask=key_padding_mask(valid))
    torch.testing.assert_close(out, naive(attn, x, mask=key_padding_mask(valid)), atol=1e-5, rtol=1e-5)
    # Padded positions of row 1 may hold anything: changing them leaves every output unchanged.
    x2 = x.clone()
    x2[1, 3:] = torch.randn(T - 3, DIM) * 10
    torch.testing.assert_close(attn(x2, mask=key_padding_mask(valid))[:, :3], out[:, :3])


@pytest.mark.parametrize("context_dim", [None, 16])
def test_cross_attention_matches_naive(naive, x, context_dim):
    S = 5
    attn = Attention(DIM, HEADS, cross=True, context_dim=context_dim).eval()
    context = torch.randn(B, S, context_dim or DIM)
    torch.testing.assert_close(attn(x, context=context), naive(attn, x, context), atol=1e-5, rtol=1e-5)
    valid = torch.tensor([[True] * S, [True, True, False, False, False]])
    mask = key_padding_mask(valid)
    torch.testing.assert_close(attn(x, context=context, mask=mask), naive(attn, x, context, mask=mask),
                               atol=1e-5, rtol=1e-5)


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_attention_weights_match_naive(naive, x):
    attn = Attention(DIM, HEADS).eval()
    mask = _random_mask(B, T, T)
    _, expected = naive(attn, x, mask=mask, return_weights=True)
    torch.testing.assert_close(attn.attention_weights(x, mask=mask), expected, atol=1e-6, rtol=1e-5)


def test_rotary_attention_cached_one_token_at_a_time_equals_full():
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, rope=RotaryEmbedding(DIM // HEADS)).eval()
    x = torch.randn(B, T, DIM)
    full = attn(x, is_causal=True)
    cache = AttentionCache()
    steps = [attn(x[:, :3], is_causal=True, cache=cache)]  # a prefix, then one token per step
    steps += [attn(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(3, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# The classic 3-token worked example ("Illustrated: Self-Attention"): 4-d inputs, 3-d q/k/v.
X = torch.tensor([[1.0, 0, 1, 0], [0, 2, 0, 2], [1, 1, 1, 1]])
W_K = torch.tensor([[0.0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]])
W_Q = torch.tensor([[1.0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 1]])
W_V = torch.tensor([[0.0, 2, 0], [0, 3, 0], [1, 0, 3], [1, 1, 0]])
EXPECTED_SCORES = [[2, 4, 4], [4, 16, 12], [4, 12, 10]]
EXPECTED_WEIGHTS = [[0.0634, 0.4683, 0.4683], [0.0000, 0.9820, 0.0180], [0.0003, 0.8805, 0.1192]]
EXPECTED_OUTPUTS = [[1.9366, 6.6831, 1.5951], [1.9999, 7.9640, 0.0540], [1.9997, 7.7599, 0.3584]]


def _worked_example_attention() -> Attention:
    """One head of width 4 whose q/k/v are the example's 3-d projections padded by a zero
    channel (which adds 0 to every dot product); proj is the identity; scale 1 as in the example."""
    attn = Attention(4, num_heads=1, qkv_bias=False, proj_bias=False).eval()
    w = torch.zeros(12, 4)
    for i, m in enumerate((W_Q, W_K, W_V)):
        w[4 * i : 4 * i + 3] = m.T  # nn.Linear stores (out, in)
    with torch.no_grad():
        attn.qkv.weight.copy_(w)
        attn.proj.weight.copy_(torch.eye(4))
    attn.scale = 1.0
    return attn


def test_worked_example_scores_weights_outputs():
    attn = _worked_example_attention()
    x = X[None]  # (1, 3, 4)
    q, k, v = attn.project_qkv(x)
    torch.testing.assert_close(q[0, 0, :, :3], X @ W_Q)
    scores = (q @ k.transpose(-2, -1)) * attn.scale
    torch.testing.assert_close(scores[0, 0], torch.tensor(EXPECTED_SCORES, dtype=torch.float32))
    weights = attn.attention_weights(x)[0, 0]
    torch.testing.assert_close(weights, torch.tensor(EXPECTED_WEIGHTS), atol=1e-3, rtol=0)
    with torch.no_grad():
        out = attn(x)[0]  # the SDPA path, with the module's scale
    torch.testing.assert_close(out[:, :3], torch.tensor(EXPECTED_OUTPUTS), atol=2e-3, rtol=0)
    assert out[:, 3].abs().max() == 0


def test_attention_maps_one_causal_map_per_layer(naive):
    torch.manual_seed(0)
    dec = Decoder(DIM, 3, HEADS).eval()
    x = torch.randn(B, T, DIM)
    seen: list[torch.Tensor] = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for blk in dec.blocks]
    out, maps = attention_maps(dec, lambda: dec(x))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, dec(x))
    assert len(maps) == 3 and len(seen) == 3
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    for blk, attn_in, amap in zip(dec.blocks, seen, maps):
        assert amap.shape == (B, HEADS, T, T)
        torch.testing.assert_close(amap.sum(-1), torch.ones(B, HEADS, T))
        assert amap.masked_select(~tril).abs().max() == 0
        _, expected = naive(blk.attn, attn_in, mask=tril, return_weights=True)
        torch.testing.assert_close(amap, expected, atol=1e-6, rtol=1e-5)


def test_attention_maps_skip_cross_attention_and_remove_hooks():
    torch.manual_seed(0)
    dec = Decoder(DIM, 2, HEADS, cross_attention=True).eval()
    x, ctx = torch.randn(1, 4, DIM), torch.randn(1, 6, DIM)
    _, maps = attention_maps(dec, lambda: dec(x, context=ctx))
    assert [m.shape for m in maps] == [(1, HEADS, 4, 4)] * 2
    assert all(not m._forward_hooks for m in dec.modules() if isinstance(m, nn.Module))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "bias"])
def test_a_bf16_decoding_step_agrees_with_fp32(mask_kind):
    """One query per row in bf16 on the CPU takes the two-product path (`_one_query_attention`, fp32
    scores); it stays as close to fp32 as SDPA's bf16 kernel, masks and biases included."""
    import torch.nn.functional as F

    from mmkit.core.attention import _one_query_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, n, 16, generator=g) * 2 for n in (1, 40, 40))
    mask = {"none": None, "bool": torch.rand(3, 1, 1, 40, generator=g) > 0.3,
            "bias": torch.randn(1, 4, 1, 40, generator=g)}[mask_kind]
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True  # every row sees at least one key
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25)
    low = _one_query_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, 0.25)
    sdpa = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask, scale=0.25)
    assert low.dtype == torch.bfloat16
    assert (low.float() - exact).abs().max() <= 1.5 * (sdpa.float() - exact).abs().max() + 1e-3


def test_a_bf16_cached_step_takes_the_two_product_path_and_agrees(monkeypatch):
    import mmkit.core.attention as attention

    torch.manual_seed(0)
    layer = Attention(32, num_heads=4, cross=True).eval()
    x, context = torch.randn(2, 1, 32), torch.randn(2, 30, 32)
    calls = []
    real = attention._one_query_attention
    monkeypatch.setattr(attention, "_one_query_attention", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        exact = layer(x, context)
        cache = AttentionCache()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = layer(x, context, cache=cache)
            again = layer(x, cache=cache)  # keys and values from the cache, stored contiguous
    assert calls == [1, 1] and cache.keys.is_contiguous() and cache.values.is_contiguous()
    assert torch.equal(first, again)
    assert (first.float() - exact).abs().max() <= 0.05 * exact.abs().max()


@pytest.mark.parametrize("mask_kind", ["none", "padding", "per-row"])
@pytest.mark.parametrize("step", [False, True])
def test_grouped_cross_attention_equals_the_context_repeated(naive, mask_kind, step):
    """A context of B rows for B·g query rows (a beam search's beams, `_context_group`): row b·g + j attends to
    context row b, as with the context repeated g times; a key-padding mask of the B rows applies to each group,
    a mask of the B·g rows (one per query row) makes the keys repeated instead. A cached decoding step (one query
    a row) takes the two-product path; a prompt (3 queries a row) SDPA."""
    import mmkit.core.attention as attention

    torch.manual_seed(0)
    g, S, T = 4, 6, 1 if step else 3
    attn = Attention(DIM, HEADS, cross=True).eval()
    x, context = torch.randn(B * g, T, DIM), torch.randn(B, S, DIM)
    valid = torch.tensor([[True] * S, [True, True, True, False, False, False]])
    mask = {"none": None, "padding": key_padding_mask(valid),
            "per-row": key_padding_mask(valid.repeat_interleave(g, 0) & (torch.rand(B * g, S) > 0.3) |
                                        torch.arange(S).eq(0))}[mask_kind]
    repeated_mask = mask.repeat_interleave(g, 0) if mask_kind == "padding" else mask
    repeated = context.repeat_interleave(g, 0)
    expected = naive(attn, x, repeated, mask=repeated_mask)
    with torch.no_grad():
        cache = AttentionCache()
        got = attn(x, context=context, mask=mask, cache=cache if step else None)
        assert cache.keys.shape[0] == B if step else cache.is_empty  # the keys and values of B rows, not B·g
        again = attn(x, mask=mask, cache=cache) if step else got
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, got)
    assert attention._context_group(torch.zeros(8, 1, 1, 1), torch.zeros(2, 1, 1, 1)) == 4
    with pytest.raises(ValueError, match="cross-attention of 5 rows to a context of 2"):
        attn(torch.randn(5, T, DIM), context=context)


def test_grouped_cross_attention_maps_repeat_the_context():
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, cross=True).eval()
    x, context = torch.randn(4, 2, DIM), torch.randn(2, 5, DIM)
    torch.testing.assert_close(attn.attention_weights(x, context),
                               attn.attention_weights(x, context.repeat_interleave(2, 0)))


def test_a_grouped_bf16_step_agrees_with_fp32():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, cross=True).eval()
    x, context = torch.randn(6, 1, 32), torch.randn(2, 30, 32)
    with torch.no_grad():
        exact = attn(x, context.repeat_interleave(3, 0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn(x, context, cache=AttentionCache())
    assert low.dtype == torch.bfloat16
    assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_a_cached_gpu_step_leaves_out_cudnn_attention():
    """cuDNN's SDPA plans every new key length anew (each decoding step's): on an H200 a bf16 whisper-tiny
    transcription ran 2.3x slower than fp32 with it, level without. The other backends stay as they were set."""
    from mmkit.core.attention import _WithoutCudnnAttention

    flags = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
             torch.backends.cuda.math_sdp_enabled)
    before = [flag() for flag in flags]
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with _WithoutCudnnAttention():
        assert not torch.backends.cuda.cudnn_sdp_enabled() and [flag() for flag in flags] == before
    assert torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # a user's choice stays
    try:
        with _WithoutCudnnAttention():
            pass
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
