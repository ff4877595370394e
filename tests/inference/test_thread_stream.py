"""ThreadStream: a worker thread's items as an iterator (TextGenerator.stream, the text-to-image demo)."""
from __future__ import annotations

import threading

import pytest

from mmkit.inference.thread_stream import ThreadStream


def test_items_in_order_then_the_result():
    stream = ThreadStream(lambda put: [put(i) for i in range(5)] and "done")
    assert list(stream) == [0, 1, 2, 3, 4] and stream.result == "done"
    assert list(stream) == []  # ended


def test_the_producers_error_follows_the_items_put_before_it():
    def produce(put):
        put("a")
        raise ValueError("bad setting")

    stream = ThreadStream(produce)
    assert next(stream) == "a"
    with pytest.raises(ValueError, match="bad setting"):
        next(stream)
    assert list(stream) == []


def test_closing_stops_the_producer_at_its_next_item():
    stopped, go_on = threading.Event(), threading.Event()

    def produce(put):
        try:
            put(1)
            go_on.wait(10)
            put(2)  # raises: the consumer is gone
            put(3)
        finally:
            stopped.set()

    stream = ThreadStream(produce)
    assert next(stream) == 1
    stream.close()
    go_on.set()
    assert stopped.wait(10) and stream.result is None
