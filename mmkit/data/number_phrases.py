"""An embedded English -> German parallel corpus of number and date phrases, generated offline
with num2words (cardinals, ordinals) and Babel's CLDR date formats: German glues and reorders
what English spells apart ("one hundred and twenty-three" -> "einhundertdreiundzwanzig",
"Friday, March 5, 2021" -> "Freitag, 5. März 2021"). The split is by value (a hash of the
number or the date), so validation and test numbers and dates never occur in training.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import random

from babel.dates import format_date
from num2words import num2words

from mmkit.data.translation_batches import IGNORE_INDEX, SPLITS, TranslationCollate, TranslationDataModule

__all__ = ["IGNORE_INDEX", "SPLITS", "NumberPhrasesDataModule", "TranslationCollate", "make_pairs", "split_of"]
_FIRST_DAY, _DAYS = dt.date(1950, 1, 1), 100 * 365 + 24  # 1950-01-01 .. 2049-12-31


def split_of(key: str) -> str:
    """'test' for 6% of keys, 'val' for 4%, else 'train' (stable across runs and machines)."""
    h = int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "big") / 2**32
    return "test" if h < 0.06 else "val" if h < 0.10 else "train"


def _cardinal(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randrange(10 ** rng.randint(1, 6))  # uniform number of digits, 1..6
    return f"n{n}", num2words(n, lang="en"), num2words(n, lang="de")


def _ordinal(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(1, 1000)
    return f"o{n}", num2words(n, lang="en", to="ordinal"), num2words(n, lang="de", to="ordinal")


def _date(rng: random.Random) -> tuple[str, str, str]:
    day = _FIRST_DAY + dt.timedelta(days=rng.randrange(_DAYS))
    style = rng.choice(("long", "full"))
    return f"d{day.isoformat()}", format_date(day, style, locale="en"), format_date(day, style, locale="de")


def make_pairs(split: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct (English, German) pairs whose values belong to `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{seed}-{split}")
    makers = (_cardinal, _cardinal, _ordinal, _date, _date)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for _ in range(200 * n + 1000):  # bounded: the pools are far larger than any sensible n
        key, en, de = rng.choice(makers)(rng)
        if split_of(key) == split and en not in seen:
            seen.add(en)
            pairs.append((en, de))
            if len(pairs) == n:
                return pairs
    raise ValueError(f"could not draw {n} distinct {split} pairs")


class NumberPhrasesDataModule(TranslationDataModule):
    """English -> German number/date phrases with a SentencePiece vocabulary trained on the
    training pairs (`tokenizer`, ids: pad 0, unk 1, bos 2, eos 3).

    Args:
        n_train, n_val, n_test: pairs per split (values disjoint across splits).
        vocab_size: SentencePiece pieces, shared by both languages.
        tokenizer: an exported `spm.model` (or its directory) to use instead of training one.
        batch_size, num_workers, seed: the usual.
    """

    def __init__(self, n_train: int = 40000, n_val: int = 300, n_test: int = 1000, vocab_size: int = 320,
                 tokenizer: str | None = None, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def read_pairs(self) -> dict[str, list[tuple[str, str]]]:
        h = self.hparams
        return {s: make_pairs(s, n, h.seed) for s, n in zip(SPLITS, (h.n_train, h.n_val, h.n_test))}
