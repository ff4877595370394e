"""Shared bench timing helpers: alternating order, warm-up excluded, thread count restored."""
import torch

from mmkit.cli.bench.common import interleaved, torch_threads


def test_interleaved_alternates_order_and_skips_warmup():
    calls = []
    runs = {"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)}
    seconds, outputs = interleaved(runs, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in seconds.items()} == {"a": 2, "b": 2}
    assert outputs == {"a": 5, "b": 6}


def test_torch_threads_restores_the_count_after_an_error():
    before = torch.get_num_threads()
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise ValueError
    except ValueError:
        pass
    assert torch.get_num_threads() == before
