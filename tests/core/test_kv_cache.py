"""KVCache growth beyond its initial capacity and beam-search reordering."""
from __future__ import annotations

import torch

from mmkit.core import AttentionCache, KVCache

B, H, D = 3, 2, 4


def test_append_one_token_at_a_time_beyond_initial_capacity_equals_concatenation():
    torch.manual_seed(0)
    cache = AttentionCache()
    ks, vs = torch.randn(B, H, 40, D), torch.randn(B, H, 40, D)
    k, v = cache.append(ks[:, :, :5], vs[:, :, :5])  # a prompt, then single tokens
    storages = {cache._k.data_ptr()}
    for t in range(5, 40):
        k, v = cache.append(ks[:, :, t : t + 1], vs[:, :, t : t + 1])
        storages.add(cache._k.data_ptr())
        assert cache.length == t + 1
        torch.testing.assert_close(k, ks[:, :, : t + 1], rtol=0, atol=0)
        torch.testing.assert_close(v, vs[:, :, : t + 1], rtol=0, atol=0)
    # Grew past the initial 16 slots by doubling (16 -> 32 -> 64): amortised O(1) per token,
    # not one reallocation per step.
    assert cache._k.shape[2] == 64 and len(storages) == 3


def test_append_chunk_larger_than_capacity():
    cache = AttentionCache()
    ks = torch.randn(1, H, 50, D)
    cache.append(ks[:, :, :10], ks[:, :, :10])
    k, _ = cache.append(ks[:, :, 10:], ks[:, :, 10:])  # 10 + 40 > 2 * 16
    torch.testing.assert_close(k, ks, rtol=0, atol=0)


def test_reorder_selects_rows_and_appending_continues():
    torch.manual_seed(0)
    kv = KVCache()
    ks, vs = torch.randn(B, H, 6, D), torch.randn(B, H, 6, D)
    ctx_k, ctx_v = torch.randn(B, H, 5, D), torch.randn(B, H, 5, D)
    for layer in range(2):
        kv.layer(layer).self_attn.append(ks[:, :, :5], vs[:, :, :5])
        kv.layer(layer).cross_attn.set(ctx_k, ctx_v)
    assert len(kv.layers) == 2 and kv.length == 5
    index = torch.tensor([2, 0, 0])
    kv.reorder(index)
    assert kv.length == 5
    for block in kv.layers:
        torch.testing.assert_close(block.self_attn.keys, ks[index, :, :5], rtol=0, atol=0)
        torch.testing.assert_close(block.self_attn.values, vs[index, :, :5], rtol=0, atol=0)
        torch.testing.assert_close(block.cross_attn.keys, ctx_k[index], rtol=0, atol=0)
        torch.testing.assert_close(block.cross_attn.values, ctx_v[index], rtol=0, atol=0)
    # Rows 1 and 2 are now copies of old row 0; a new step must write into each independently.
    new_k = torch.randn(B, H, 1, D)
    k, _ = kv.layers[0].self_attn.append(new_k, new_k)
    torch.testing.assert_close(k, torch.cat([ks[index, :, :5], new_k], dim=2), rtol=0, atol=0)
    assert not torch.equal(k[1, :, 5], k[2, :, 5])


def test_empty_cache_state():
    kv = KVCache()
    assert kv.length == 0 and kv.layers == []
    kv.reorder(torch.tensor([0]))  # nothing to reorder, nothing breaks
    assert kv.layer(1).self_attn.is_empty and len(kv.layers) == 2
