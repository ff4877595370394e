"""Rows of token ids held compactly in memory (one int32 array and the rows' offsets), and long
sequences cut into model-sized windows, as BERT's pretraining (Devlin et al., 2019, §A.2) cuts a
document into sequences of at most its max length instead of dropping what does not fit.
"""
from __future__ import annotations

from array import array
from typing import Iterable, Iterator, Sequence


class TokenRows(Sequence[list[int]]):
    """Rows of token ids kept as one int32 array and the rows' offsets: 4 bytes a token, not the 8 of a
    Python list's pointer (plus an int object for ids above 256). `rows[i]` is row i as a list."""

    def __init__(self, rows: Iterable[Sequence[int]] = ()) -> None:
        self.ids, self.starts = array("i"), array("q", [0])
        self.extend(rows)

    def extend(self, rows: Iterable[Sequence[int]]) -> None:
        for row in rows:
            self.ids.extend(row)
            self.starts.append(len(self.ids))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> list[int]:  # type: ignore[override] - rows are read one at a time
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        i %= len(self)
        return self.ids[self.starts[i] : self.starts[i + 1]].tolist()

    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def windows(framed: Iterable[Sequence[int]], max_len: int) -> Iterator[list[int]]:
    """Each framed sequence ([CLS] tokens [SEP]) cut into consecutive windows of at most `max_len` ids,
    each framed again, so a long document loses no text; one with no tokens between its frame is left out."""
    size = max_len - 2
    for ids in framed:
        first, body, last = ids[0], ids[1:-1], ids[-1]
        for start in range(0, len(body), size):
            yield [first, *body[start : start + size], last]
