"""What a producer hands over from a worker thread, as an iterator: a decoding's text pieces
(`TextGenerator.stream`), a sampler's preview images (the text-to-image demo)."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class ThreadStream(Generic[T]):
    """Runs `produce(put)` in a daemon thread and yields each item it puts, in order. An exception `produce`
    raises is raised by the iteration (after the items put before it); `result` holds what `produce` returned
    once the iteration has ended. Closing early (`close()`; the consumer's own generator closed: a `break`, a
    cancelled request, a client gone) makes the next `put` raise inside the worker, so the producer stops at
    its next item instead of running on for nobody (and each cancel leaving one more thread)."""

    def __init__(self, produce: Callable[[Callable[[T], None]], Any]) -> None:
        self.result: Any = None
        self._items: queue.Queue = queue.Queue()
        self._closed, self._ended = threading.Event(), False
        threading.Thread(target=self._work, args=(produce,), daemon=True).start()

    def _put(self, item: T) -> None:
        if self._closed.is_set():
            raise _Closed
        self._items.put(item)

    def _work(self, produce: Callable[[Callable[[T], None]], Any]) -> None:
        try:
            self.result = produce(self._put)
        except _Closed:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread, which raises it
            self._items.put(_Failed(e))
        finally:
            self._items.put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = _END if self._ended else self._items.get()
        if item is _END or isinstance(item, _Failed):
            self._ended = True
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        self._closed.set()


class _Closed(Exception):
    """The consumer closed the stream: the producer stops at its next `put`."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()
