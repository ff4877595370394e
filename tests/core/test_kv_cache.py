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


def _filled_cache(batch: int = B, prefix: int = 3, layers: int = 2) -> KVCache:
    """A cache as a decoder leaves it after a prompt: static cross-attention and a self prefix."""
    torch.manual_seed(1)
    cache = KVCache()
    for i in range(layers):
        block = cache.layer(i)
        block.cross_attn.set(torch.randn(batch, H, 7, D), torch.randn(batch, H, 7, D))
        block.self_attn.append(torch.randn(batch, H, prefix, D), torch.randn(batch, H, prefix, D))
    return cache


def test_fork_of_every_row_shares_cross_attention_and_copies_the_prefix():
    cache = _filled_cache()
    assert cache.batch_size == B and KVCache().batch_size == 0
    fork = cache.fork(torch.arange(B))
    for old, new in zip(cache.layers, fork.layers):
        assert new.cross_attn.keys.data_ptr() == old.cross_attn.keys.data_ptr()  # computed once, shared
        assert new.self_attn.keys.data_ptr() != old.self_attn.keys.data_ptr()
        torch.testing.assert_close(new.self_attn.keys, old.self_attn.keys, rtol=0, atol=0)
    # the fork grows on its own: the original keeps its length and values
    before = cache.layers[0].self_attn.keys.clone()
    fork.layers[0].self_attn.append(torch.ones(B, H, 1, D), torch.ones(B, H, 1, D))
    assert fork.length == 4 and cache.length == 3
    torch.testing.assert_close(cache.layers[0].self_attn.keys, before, rtol=0, atol=0)


def test_fork_of_some_or_permuted_rows_selects_them_and_can_drop_the_prefix():
    cache = _filled_cache()
    for rows in (torch.tensor([2, 0]), torch.tensor([2, 1, 0])):  # a subset; all rows but reordered
        fork = cache.fork(rows)
        for old, new in zip(cache.layers, fork.layers):
            torch.testing.assert_close(new.cross_attn.keys, old.cross_attn.keys[rows], rtol=0, atol=0)
            torch.testing.assert_close(new.cross_attn.values, old.cross_attn.values[rows], rtol=0, atol=0)
            torch.testing.assert_close(new.self_attn.values, old.self_attn.values[rows], rtol=0, atol=0)
    bare = cache.fork(torch.tensor([1]), keep_prefix=False)
    assert bare.length == 0 and bare.batch_size == 1
    torch.testing.assert_close(bare.layers[1].cross_attn.keys, cache.layers[1].cross_attn.keys[1:2], rtol=0, atol=0)


def test_a_grouped_cache_forks_and_reorders_as_with_its_context_repeated():
    """After a beam search whose beams share their context (`beams_share_context`), a cache holds B·K rows of
    self-attention and B of cross-attention; forking or reordering its rows gives each row its own context row, as
    the same cache with the cross-attention entries repeated K times would."""
    g = torch.Generator().manual_seed(0)
    B, K = 2, 3
    grouped, repeated = KVCache(), KVCache()
    self_k, self_v = (torch.randn(B * K, 2, 4, 5, generator=g) for _ in range(2))
    cross_k, cross_v = (torch.randn(B, 2, 7, 5, generator=g) for _ in range(2))
    for cache, n in ((grouped, 1), (repeated, K)):
        layer = cache.layer(0)
        layer.self_attn.append(self_k, self_v)
        layer.cross_attn.set(cross_k.repeat_interleave(n, 0), cross_v.repeat_interleave(n, 0))
    for rows in (torch.arange(B * K), torch.tensor([5, 0, 3]), torch.tensor([4, 4, 1, 2, 0, 5])):
        for keep_prefix in (True, False):
            a, b = grouped.fork(rows, keep_prefix), repeated.fork(rows, keep_prefix)
            assert torch.equal(a.layers[0].cross_attn.keys, b.layers[0].cross_attn.keys)
            assert torch.equal(a.layers[0].cross_attn.values, b.layers[0].cross_attn.values)
            assert a.batch_size == b.batch_size == len(rows)
    index = torch.tensor([1, 1, 0, 5, 3, 3])
    grouped.reorder(index)
    repeated.reorder(index)
    assert torch.equal(grouped.layers[0].cross_attn.keys, repeated.layers[0].cross_attn.keys)
    assert torch.equal(grouped.layers[0].self_attn.keys, repeated.layers[0].self_attn.keys)
