"""`attention_maps` on a model shared between threads (the Gradio demos run events concurrently):
each call collects its own thread's forward passes only, never another thread's maps."""
from __future__ import annotations

import threading

import torch

from mmkit.core import Encoder, attention_maps

DIM, HEADS, DEPTH = 16, 4, 2
ROUNDS = 200


def _run_together(*loops) -> list[BaseException]:
    """Run the loops in threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(loops))

    def guarded(loop):
        start.wait()
        try:
            loop()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_maps_are_the_calling_threads_own_under_concurrent_forwards():
    torch.manual_seed(0)
    model = Encoder(DIM, DEPTH, HEADS).eval()
    short, long, other = torch.randn(1, 5, DIM), torch.randn(1, 34, DIM), torch.randn(1, 5, DIM)
    with torch.inference_mode():
        _, expected = attention_maps(model, lambda: model(short))
    wrong: list[str] = []

    def plain_forwards():  # the Fill event: no attention_maps of its own
        with torch.inference_mode():
            for _ in range(ROUNDS):
                model(long)
                model(other)

    def views(x, reference):
        def loop():
            with torch.inference_mode():
                for _ in range(ROUNDS):
                    _, maps = attention_maps(model, lambda: model(x))
                    if len(maps) != DEPTH or not all(torch.equal(m, e) for m, e in zip(maps, reference)):
                        wrong.append(f"{len(maps)} maps of shapes {[tuple(m.shape) for m in maps]}")
        return loop

    with torch.inference_mode():
        _, expected_other = attention_maps(model, lambda: model(other))
    errors = _run_together(plain_forwards, views(short, expected), views(other, expected_other))
    assert not errors and not wrong, (errors[:1], wrong[:3], len(wrong))
    assert all(not m._forward_hooks for m in model.modules())  # every call removed its hooks


def test_cross_attention_maps_over_the_context(naive):
    from mmkit.core import Decoder

    torch.manual_seed(0)
    dec = Decoder(DIM, 2, HEADS, cross_attention=True).eval()
    x, ctx = torch.randn(1, 3, DIM), torch.randn(1, 7, DIM)
    seen: list[torch.Tensor] = []
    hooks = [blk.cross_attn.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for blk in dec.blocks]
    _, maps = attention_maps(dec, lambda: dec(x, context=ctx), cross=True)
    for h in hooks:
        h.remove()
    assert [m.shape for m in maps] == [(1, HEADS, 3, 7)] * 2
    for blk, attn_in, amap in zip(dec.blocks, seen, maps):
        _, expected = naive(blk.cross_attn, attn_in, context=ctx, return_weights=True)
        torch.testing.assert_close(amap, expected, atol=1e-6, rtol=1e-5)
