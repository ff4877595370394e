"""One's own parallel text for the translation recipe (the 2017 Transformer, configs/translate_numbers.yaml):
(source, target) pairs from .tsv files (source<TAB>target a line, no header) or .jsonl files ({"source": ...,
"target": ...} a row), read a line at a time (`mmkit.data.lines`), with the shared SentencePiece vocabulary
trained on the training pairs as the embedded corpus trains its (`mmkit.data.translation_batches`). Without a
val_file the held-out pairs are chosen by a stable hash of the source, so a sentence never lands on both sides.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from mmkit.data.corpora import split_held_out
from mmkit.data.lines import iter_line_pieces
from mmkit.data.translation_batches import Pair, TranslationDataModule

log = logging.getLogger(__name__)
PAIR_SUFFIXES = (".tsv", ".jsonl")
MAX_ROW_BYTES = 1 << 20  # a longer row is a bad row (no sentence pair is a MiB long): memory holds one row
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRow(ValueError):
    """Why a row of a pairs file holds no usable pair."""


class _Skipped:
    """The bad rows of one file, by reason: how many, and the line of the first; `warn` says them in one line."""

    def __init__(self, path: Path) -> None:
        self.path, self.reasons = path, {}  # reason -> [count, first line]

    def skip(self, number: int, why: str) -> None:
        self.reasons.setdefault(why, [0, number])[0] += 1

    def __len__(self) -> int:
        return sum(count for count, _ in self.reasons.values())

    def warn(self, rows: int) -> None:
        if self.reasons:
            log.warning("%s: skipped %d of %d rows: %s", self.path, len(self), rows, "; ".join(
                f"{count} {why} (first at {self.path}:{line})" for why, (count, line) in self.reasons.items()))


def _sides(source: object, target: object) -> Pair:
    if not isinstance(source, str) or not isinstance(target, str):
        raise BadRow("without a string source and target")
    source, target = source.strip(), target.strip()
    if not source or not target:
        raise BadRow("with an empty side")
    return source, target


def tsv_pair(text: str) -> Pair:
    """(source, target) of one .tsv line (its break removed): two fields separated by one tab."""
    fields = text.split("\t")
    if len(fields) != 2:
        raise BadRow("without exactly one tab between source and target")
    return _sides(*fields)


def jsonl_pair(text: str, source_key: str = "source", target_key: str = "target") -> Pair:
    """(source, target) of one .jsonl row: a JSON object with the two keys' non-empty strings."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        raise BadRow("not JSON") from None
    if not isinstance(row, dict):
        raise BadRow("not a JSON object")
    if source_key not in row or target_key not in row:
        raise BadRow(f"without a {source_key!r} or {target_key!r} key")
    pair = _sides(row[source_key], row[target_key])
    if _SURROGATE.search(pair[0] + pair[1]):  # a "\ud800" escape: valid JSON, no valid text
        raise BadRow("with an unpaired surrogate escape (\\ud800-\\udfff)")
    return pair


def check_pairs_file(option: str, path: str | Path, source_key: str = "source", target_key: str = "target") -> Path:
    """`path` as a Path; a ValueError naming `option` when its suffix is neither .tsv nor .jsonl."""
    path = Path(path).expanduser()
    if path.suffix not in PAIR_SUFFIXES:
        raise ValueError(f"{option} {path} is neither .tsv nor .jsonl: give a .tsv file (source<TAB>target a line) "
                         f"or a .jsonl file ({{{json.dumps(source_key)}: ..., {json.dumps(target_key)}: ...}} a row)")
    return path


def read_pairs_file(path: str | Path, option: str = "train_file", source_key: str = "source",
                    target_key: str = "target") -> list[Pair]:
    """The (source, target) pairs of a .tsv or .jsonl file, in file order, each side stripped; blank lines are
    passed over, bad rows (not UTF-8, NUL bytes, longer than `MAX_ROW_BYTES`, no two non-empty sides) skipped
    and said in one warning naming the file, each reason's count and its first line.

    Raises:
        ValueError: naming `option`: not a .tsv/.jsonl file, no such file, or no usable pair in it.
    """
    path = check_pairs_file(option, path, source_key, target_key)
    if not path.is_file():
        raise ValueError(f"{option} {path} is not a file: give the path of a .tsv or .jsonl file of pairs")
    pairs: list[Pair] = []
    skipped, rows, long_row = _Skipped(path), 0, 0
    for piece in iter_line_pieces(path, MAX_ROW_BYTES):
        if piece.cut or piece.number == long_row:  # the pieces of a row longer than MAX_ROW_BYTES
            if piece.number != long_row:
                long_row, rows = piece.number, rows + 1
                skipped.skip(piece.number, f"longer than {MAX_ROW_BYTES >> 20} MiB")
            continue
        try:
            text = piece.data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            rows += 1
            skipped.skip(piece.number, "not UTF-8 text")
            continue
        if not text.strip() and "\t" not in text:  # a blank line; "\t" alone is a row with two empty sides
            continue
        rows += 1
        try:
            if "\0" in text:
                raise BadRow("with NUL bytes (binary or UTF-16 text?)")
            pairs.append(tsv_pair(text) if path.suffix == ".tsv" else jsonl_pair(text, source_key, target_key))
        except BadRow as e:
            skipped.skip(piece.number, str(e))
    skipped.warn(rows)
    if not pairs:
        bad = f" ({len(skipped)} bad rows, said above)" if skipped else ""
        form = "source<TAB>target a line" if path.suffix == ".tsv" else f"{source_key!r} and {target_key!r} a row"
        raise ValueError(f"{option} {path} holds no usable pair{bad}: give a file with a non-empty {form}")
    return pairs


DEFAULT_MAX_LEN = 64  # tokens a side outside a run, where no model gives its max_len


class TranslationPairsDataModule(TranslationDataModule):
    """One's own (source, target) pairs for `mmkit.tasks.translation.TranslationTask`, with a shared
    SentencePiece vocabulary (`tokenizer`, ids: pad 0, unk 1, bos 2, eos 3). Memory holds the pairs' text.

    Args:
        train_file: .tsv (source<TAB>target a line, no header) or .jsonl file of training pairs.
        val_file: pairs to validate on; None: `val_split` of train_file's pairs, by a hash of the source.
        test_file: pairs for `mmkit test`; None: the validation pairs.
        val_split: share of train_file's pairs held out when there is no val_file, in (0, 1).
        source_key, target_key: fields of .jsonl rows holding the two sides.
        vocab_size: SentencePiece pieces, shared by both languages, trained on the training pairs.
        tokenizer: an exported `spm.model` (or its directory) to use instead of training one.
        max_len: tokens per side at most (EOS included): longer pairs are left out, said. None: the model's
            max_len (the run's model, read at setup: linked, not repeated; 64 outside a run); more than the
            model's is refused (its positions end there).
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, train_file: str, val_file: str | None = None, test_file: str | None = None,
                 val_split: float = 0.05, source_key: str = "source", target_key: str = "target",
                 vocab_size: int = 8000, tokenizer: str | None = None, max_len: int | None = None, batch_size: int = 64,
                 num_workers: int = 0) -> None:
        super().__init__()
        for option, path in (("train_file", train_file), ("val_file", val_file), ("test_file", test_file)):
            if path is not None:
                check_pairs_file(option, path, source_key, target_key)
        if val_file is None and not 0 < val_split < 1:
            raise ValueError(f"val_split {val_split} holds out no pairs (there is no val_file): give a val_split "
                             "between 0 and 1, or a val_file")
        if max_len is not None and max_len < 2:
            raise ValueError(f"max_len {max_len} leaves no room for a token and EOS: give at least 2 (the model's)")
        self.save_hyperparameters()
        self.origin: dict[str, str] = {}  # split -> where its pairs come from, for messages
        self.max_len: int | None = max_len  # at setup: the tokens a side may hold (`_max_len`)

    def read_pairs(self) -> dict[str, list[Pair]]:
        h = self.hparams
        train = read_pairs_file(h.train_file, "train_file", h.source_key, h.target_key)
        self.origin = {"train": f"train_file {h.train_file}", "val": f"val_file {h.val_file}",
                       "test": f"test_file {h.test_file}"}
        if h.val_file:
            val = read_pairs_file(h.val_file, "val_file", h.source_key, h.target_key)
        else:
            total = len(train)
            train, val = split_held_out(train, h.val_split, key=lambda pair: pair[0])
            if not train or not val:
                raise ValueError(f"val_split {h.val_split} puts {len(train)} of the {total} pairs of train_file "
                                 f"{h.train_file} in training and {len(val)} in validation: give more pairs, "
                                 "another val_split or a val_file")
            self.origin["val"] = f"the held-out share of train_file {h.train_file}"
        if not h.test_file:
            self.origin["test"] = self.origin["val"]
            return {"train": train, "val": val, "test": val}
        return {"train": train, "val": val, "test": read_pairs_file(h.test_file, "test_file", h.source_key,
                                                                      h.target_key)}

    def fitted(self, pairs: dict[str, list[Pair]]) -> dict[str, list[Pair]]:
        """The pairs whose sides both fit in `max_len` tokens; the others left out with a warning a split."""
        self.max_len = self._max_len()
        out: dict[str, list[Pair]] = {}
        for split, items in pairs.items():
            if split == "test" and items is pairs["val"]:
                out[split] = out["val"]
                continue
            kept = [pair for pair in items if self._fits(pair)]
            if not kept:
                raise ValueError(f"no pair of {self.origin[split]} fits in max_len {self.max_len} tokens a "
                                 "side: raise the model's max_len, --model.init_args.model.init_args.max_len "
                                 "(the data's follows)")
            if len(kept) < len(items):
                log.warning("%s: left out %d of %d pairs with a side longer than max_len %d tokens (raise it with "
                            "the model's max_len to keep them)", self.origin[split], len(items) - len(kept),
                            len(items), self.max_len)
            out[split] = kept
        return out

    def _max_len(self) -> int:
        """The tokens a side may hold: the given max_len, else the run's model's (64 outside a run)."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        model_len = getattr(getattr(module, "model", None), "max_len", None)
        given = self.hparams.max_len
        if given is None:
            return model_len if isinstance(model_len, int) else DEFAULT_MAX_LEN
        if isinstance(model_len, int) and given > model_len:
            raise ValueError(f"max_len {given} is more than the model's {model_len} positions: drop "
                             "--data.init_args.max_len (the model's is taken) or raise the model's, "
                             "--model.init_args.model.init_args.max_len")
        return given

    def _fits(self, pair: Pair) -> bool:
        return all(len(self.tokenizer.encode(side)) <= self.max_len for side in pair)
